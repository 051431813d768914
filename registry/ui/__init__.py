"""The registry's web UI at ``/ui``: server-rendered pages (Jinja2) over the store, with a little
JavaScript for the live event feed.  Read-only except for moving an alias, which goes through the
same rules as the API (scopes, protected aliases, the audit trail).  Part of the base package.

Sign-in stores the token in an HttpOnly, SameSite=Strict cookie scoped to ``/ui``; it never
appears in a URL.
"""
