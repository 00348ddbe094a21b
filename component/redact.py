"""Shortening of identifiers that must never be shown whole (tokens, secrets, addresses)."""

from __future__ import annotations


def shorten(value: str | None, keep: int = 4) -> str:
    """`abcdef…wxyz`: enough for an operator to match a device, useless to an attacker."""
    if not value:
        return "-"
    if len(value) <= 2 * keep + 4:
        return value[:2] + "…"
    return f"{value[:keep]}…{value[-keep:]}"


def mask_email(address: str | None) -> str:
    if not address or "@" not in address:
        return shorten(address)
    local, _, domain = address.rpartition("@")
    return f"{local[:1]}***@{domain}"
