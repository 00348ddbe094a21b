from tests.support.conftest_xmpp import *  # noqa
from tests.support.conftest_services import *  # noqa: F403
from tests.support.stack import *  # noqa: F403
