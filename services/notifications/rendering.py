"""Messages rendered from the Jinja2 templates in ``templates/``.

One directory per channel template (email, sms, push), one file per event and
part: ``email/<event>.subject.txt``, ``email/<event>.txt``,
``email/<event>.html``, ``sms/<event>.txt``, ``push/<event>.title.txt`` and
``push/<event>.txt``. HTML is escaped, text is not. A variable a template
names but the context lacks is an error, not a blank, so a broken template
shows in tests instead of in customers' inboxes.
"""
import os
from collections import namedtuple

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from . import domain

TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")

Content = namedtuple("Content", "subject body html")


class Renderer:
    def __init__(self, directory=TEMPLATE_DIR):
        self.env = Environment(
            loader=FileSystemLoader(directory),
            autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
            # templates ship with the code and change with a deploy: no stat()
            # of each file on every render to look for edits
            auto_reload=False,
        )
        self.env.filters["money"] = domain.money

    def _render(self, name, context):
        return self.env.get_template(name).render(context).strip()

    def render(self, event_type, template, order):
        """Subject, text and (email only) HTML of ``event_type`` for a channel template."""
        context = domain.template_context(event_type, order)
        email_subject = " ".join(self._render("email/{}.subject.txt".format(event_type), context).split())
        if template == domain.EMAIL:
            return Content(email_subject,
                           self._render("email/{}.txt".format(event_type), context) + "\n",
                           self._render("email/{}.html".format(event_type), context) + "\n")
        if template == domain.PUSH:
            return Content(self._render("push/{}.title.txt".format(event_type), context),
                           self._render("push/{}.txt".format(event_type), context), None)
        if template == domain.SMS:
            return Content(email_subject, self._render("sms/{}.txt".format(event_type), context), None)
        raise ValueError("no templates for channel {!r}".format(template))
