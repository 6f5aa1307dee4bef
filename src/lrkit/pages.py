"""lrkit's one writer of HTML reports: Jinja2 templates in ``lrkit/templates`` (a base page
with the one stylesheet, ``lrkit.css``, inlined so that a page is one self-contained file)
for the autopilot, tune and arena pages. Values are escaped by the templates."""
from __future__ import annotations

import functools
from typing import Any


@functools.cache
def _environment() -> Any:
    import jinja2
    from markupsafe import Markup, escape

    env = jinja2.Environment(loader=jinja2.PackageLoader("lrkit", "templates"),
                             autoescape=jinja2.select_autoescape(("html",)),
                             trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined)

    def inline_code(text: str) -> Markup:
        """Text with ``backquoted`` pieces as <code>."""
        pieces = str(escape(text)).split("`")
        return Markup("".join(f"<code>{p}</code>" if i % 2 else p
                              for i, p in enumerate(pieces)))

    env.filters["inline_code"] = inline_code
    return env


def render(template: str, **context: Any) -> str:
    """The page ``template`` (``"autopilot.html"``, ``"tune.html"``, ``"arena.html"``) filled
    with ``context``."""
    if not isinstance(template, str):
        raise TypeError(f"render(): template must be a template name such as 'arena.html', "
                        f"got {type(template).__name__}")
    import jinja2

    try:
        page = _environment().get_template(template)
    except jinja2.TemplateNotFound:
        raise ValueError(f"render(): template must be one of "
                         f"{', '.join(_environment().list_templates(['html']))}, got "
                         f"{template!r}") from None
    return page.render(**context)
