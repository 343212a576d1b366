"""Admin: browse CDRs (read-only, cheap on a table of millions), manage API tokens, see the
PortSIP webhook events that could not be stored (read-only), and a statistics dashboard.

One module per concern; importing them registers their model admins (Django imports
``cdrs.admin`` at start-up):

- ``common``: the site's titles, the billing permission, the empty marker, time formatting,
  read-only building blocks;
- ``cdr_list``: the CDR change list (paging, filters, search, columns);
- ``cdr_detail``: a CDR's page (fieldsets derived from ``cdrs.fields``, displays);
- ``cdr``: ``CdrAdmin``, the two combined;
- ``tokens``: API tokens and their form;
- ``dead_letters``: PortSIP dead letters;
- ``dashboard``: the dashboard view (routed in ``cdrservice/urls.py``).
"""

from cdrs.admin import cdr, dead_letters, tokens

__all__ = ["cdr", "dead_letters", "tokens"]
