from tests.support.conftest_xmpp import *  # noqa
from tests.support.conftest_services import *  # noqa: F403
