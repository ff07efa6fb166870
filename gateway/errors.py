"""The exceptions of :mod:`gateway`, one tree.

::

    GatewayError
     +-- StorageError     the database cannot be opened, migrated or written
     +-- BrokerError      a broker cannot be started, reached or subscribed to
     +-- OptionError      an option of the gateway is out of range (also a ValueError)
     +-- AccountsError    an accounts file is wrong (gateway.accounts)
     +-- AuthError        a token or an OAuth2 request is refused (gateway.auth)
     |    +-- TokenError       TokenMalformed, TokenInvalid, TokenExpired
     |    +-- OAuthError       an RFC 6749 error answer; AuthorizeError at /oauth2/authorize
     +-- DeriveError      a derived view asked with a bad filter (gateway.derive)
     +-- MonitorError     a callback or monitor body is wrong (gateway.monitors)
     +-- WebhookError     a webhook target or attribute is unusable (gateway.webhooks)
     +-- ApiError         an API request refused with its HTTP status (gateway.api.errors)
     +-- ApiCallError     an API call made by gateway.apiclient was refused

Each of the later ones lives beside the code that raises it and derives from
:class:`GatewayError`, so ``except GatewayError`` catches every error of the package.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error raised by :mod:`gateway`."""


class StorageError(GatewayError):
    """The database cannot be opened, migrated or written."""


class BrokerError(GatewayError):
    """A broker cannot be started, reached or subscribed to."""


class OptionError(GatewayError, ValueError):
    """An option of the gateway is out of range."""
