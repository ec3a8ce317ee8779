"""MkDocs hook: the command reference page gets every command's --help, from the parser itself."""

from search.docs import reference

MARKER = "<!-- commands -->"


def on_page_markdown(markdown, page, config, files):  # noqa: ARG001 (MkDocs' hook signature)
    if MARKER in markdown:
        return markdown.replace(MARKER, reference())
    return markdown
