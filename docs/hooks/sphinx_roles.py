"""A MkDocs hook: the docstrings cross-reference in Sphinx's style (:class:`Name`), which the Google-style parser
leaves as text; on the rendered page each role prefix is dropped and the name stays as code."""

import re

ROLE = re.compile(r":(?:class|meth|func|mod|data|attr|exc|obj):(?=<code>)")


def on_page_content(html: str, **_: object) -> str:
    return ROLE.sub("", html)
