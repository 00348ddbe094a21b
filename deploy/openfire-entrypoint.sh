#!/usr/bin/env bash
# Entrypoint of the compose stack's Openfire container (igniterealtime/openfire image).
#
# On the first start of an empty data volume it renders openfire-config/openfire.xml
# (mounted at $OFNOTIFY_OPENFIRE_TEMPLATE) with values from the environment and then
# hands over to the image's own entrypoint, unchanged. Why a wrapper at all:
#   - Openfire does not expand ${VARS} in openfire.xml, and the database password and
#     the component secret must come from .env, not from a file in the repository;
#   - the file cannot simply be bind-mounted into conf/: Openfire rewrites openfire.xml
#     (it removes <autosetup> after using it) and the image only populates conf/ of
#     the data volume when conf/ does not exist yet.
# So the rendered file replaces the image's pristine copy ($OPENFIRE_DIR/conf_org, in
# the container's own layer), which the image's entrypoint copies into the data volume
# on first start. Later starts find conf/openfire.xml in the volume and change nothing.
set -euo pipefail

OPENFIRE_DIR=${OPENFIRE_DIR:-/usr/local/openfire}
OPENFIRE_DATA_DIR=${OPENFIRE_DATA_DIR:-/var/lib/openfire}
template=${OFNOTIFY_OPENFIRE_TEMPLATE:-/opt/ofnotify/openfire.xml}
upstream=${OFNOTIFY_UPSTREAM_ENTRYPOINT:-/sbin/entrypoint.sh}

# Variables the template may use; anything else in ${...} form is an error.
names=(XMPP_DOMAIN OPENFIRE_FQDN OFNOTIFY_SECRET OPENFIRE_DB_PASSWORD
  OPENFIRE_ADMIN_PASSWORD DEMO_USER_PASSWORD)

log() { printf 'openfire-entrypoint: %s\n' "$*" >&2; }
die() {
  log "$*"
  exit 1
}

# Bash 5.2 expands an unquoted '&' in a ${var//pattern/replacement} replacement to the
# matched text: switch that off, and quote the replacements anyway.
shopt -u patsub_replacement 2>/dev/null || true

xml_escape() {
  local s=$1
  s=${s//&/"&amp;"}
  s=${s//</"&lt;"}
  s=${s//>/"&gt;"}
  s=${s//\"/"&quot;"}
  s=${s//\'/"&apos;"}
  printf '%s' "$s"
}

check_values() {
  local name value
  for name in "${names[@]}"; do
    value=${!name-}
    [[ -n $value ]] || die "$name is not set (see deploy/env.example)"
    # Control characters are not representable in XML 1.0.
    [[ $value != *[[:cntrl:]]* ]] || die "$name contains control characters"
    # Openfire trims XML values: a secret with outer spaces would not match ofnotify's.
    [[ $value == "${value#[[:space:]]}" && $value == "${value%[[:space:]]}" ]] \
      || die "$name starts or ends with whitespace"
  done
  [[ $XMPP_DOMAIN =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]] \
    || die "XMPP_DOMAIN is not a domain name: $XMPP_DOMAIN"
}

render() {
  # One pass from left to right: a value is never scanned again, so a secret that
  # happens to contain "${XMPP_DOMAIN}" stays as it is.
  local rest out="" name placeholder known
  rest=$(<"$template")
  while [[ $rest =~ \$\{([A-Za-z_][A-Za-z0-9_]*)\} ]]; do
    placeholder=${BASH_REMATCH[0]} name=${BASH_REMATCH[1]} known=
    for known in "${names[@]}" ""; do [[ $known == "$name" ]] && break; done
    [[ -n $known ]] || die "$template uses $placeholder, which this script does not provide"
    out+=${rest%%"$placeholder"*}
    out+=$(xml_escape "${!name}")
    rest=${rest#*"$placeholder"}
  done
  printf '%s%s\n' "$out" "$rest"
}

main() {
  local conf=$OPENFIRE_DATA_DIR/conf target reference
  if [[ -e $conf/openfire.xml ]]; then
    log "$conf/openfire.xml exists: already set up, leaving it to Openfire"
  else
    export OPENFIRE_FQDN=${OPENFIRE_FQDN:-openfire}
    check_values
    [[ -r $template ]] || die "template $template is missing (is openfire-config/ mounted?)"
    if [[ -d $conf ]]; then
      # A data volume with conf/ but no openfire.xml: the image will not copy conf_org.
      target=$conf/openfire.xml reference=$conf
    elif [[ -d $OPENFIRE_DIR/conf_org ]]; then
      target=$OPENFIRE_DIR/conf_org/openfire.xml reference=$OPENFIRE_DIR/conf_org
    else
      die "neither $conf nor $OPENFIRE_DIR/conf_org exists: not the image layout this script knows"
    fi
    render >"$target.tmp"
    # Openfire runs as the image's openfire user and must be able to rewrite the file;
    # it holds the database password and the component secret: nobody else reads it.
    chown --reference="$reference" "$target.tmp"
    chmod 0640 "$target.tmp"
    mv -f "$target.tmp" "$target"
    log "wrote $target for the first start (domain $XMPP_DOMAIN)"
  fi
  exec "$upstream" "$@"
}

main "$@"
