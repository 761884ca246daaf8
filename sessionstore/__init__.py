"""sessionstore: server-side WSGI sessions with one store per application."""

from .changes import UpdateFailed as UpdateFailed
from .collection import Collection as Collection
from .collection import Value as Value
from .errors import BackendError as BackendError
from .errors import BusyRetry as BusyRetry
from .errors import ConcurrentUpdate as ConcurrentUpdate
from .errors import ConfigurationError as ConfigurationError
from .errors import DamagedRecord as DamagedRecord
from .errors import InvalidAppName as InvalidAppName
from .errors import SessionStoreError as SessionStoreError
from .middleware import SessionMiddleware as SessionMiddleware
from .session import Session as Session
from .store import Store as Store
from .users import UserSession as UserSession

__version__ = "0.1.0"
