"""The web dashboard: a static, hand-written JS app served at `/`, signed in by cookie.

`routes.router` serves the page, its assets and the session routes; `session.session_team`
is the cookie fallback of the API's authentication. The UI talks to the ordinary API routes
with the cookie (GETs, the audit's EventSource) plus the CSRF token (everything else), so
the dashboard can do nothing a key of the same team could not.
"""
