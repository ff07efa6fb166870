"""The gateway's connected-car Web API (v4 shape): HAL+JSON over HTTP, OAuth2 access."""
