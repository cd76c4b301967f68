"""Rendering message templates in a sandbox.

A template sees only the plain data it is given (dicts, lists, strings, numbers,
dates): no model instances, no settings, no `{% load %}`, `{% include %}`,
`{% debug %}` or `{% url %}`. Missing variables, and those that are null, render empty and are
reported.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import re
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

from django.template import (
    Context, Engine, Library, Node, NodeList, Template, TemplateSyntaxError, Variable, VariableDoesNotExist,
)
from django.template import defaultfilters, defaulttags
from django.template.base import FilterExpression, Lexer, Parser, TextNode, VariableNode
from django.template.defaulttags import FilterNode
from django.template.smartif import TokenBase
from django.utils.html import conditional_escape
from django.utils import timezone

from channels_app.models import ContentBlock, MessageTemplate, TemplateVariant
from channels_app.services.locales import LOCALE_HELP, locale_clean, locale_fallbacks, locale_key
from journeys.errors import JourneyError

# Tags that read outside the given context (debug dumps sys.modules, load/include/url reach
# the project) are left out; everything else of the default language is available.
# `lorem` writes any amount of text from a number: not for messages.
_BLOCKED_TAGS = {"debug", "load", "url", "csrf_token", "querystring", "include", "extends", "block", "ssi",
                 "lorem"}

# Cost bounds (issue #15: `{{ 'a'|ljust:'50000000' }}` made a 50 MB preview; a block including
# itself was a 500; nesting `|make_list|join` or `|add` in {% with %} built 200 MB from 400
# characters): what a render writes, every value a filter builds, every loop and every padding
# filter is bounded, whatever the template nests, so that a render costs at most a few MB.
MAX_RENDERED_CHARS = 200_000  # written by one subject / body / HTML body / webhook payload (all its values)
MAX_VALUE_CHARS = MAX_RENDERED_CHARS  # one value a filter builds: characters of a text, items of a list
MAX_BUILT_CHARS = 10 * MAX_RENDERED_CHARS  # all the values filters build in one render, together
MAX_LOOP_ITERATIONS = 10_000  # {% for %} iterations in one message, all loops together
MAX_BLOCK_RENDERS = MAX_LOOP_ITERATIONS  # content blocks rendered in one message (inside loops, inside blocks)
MAX_FILTER_WIDTH = 1_000  # ljust/rjust/center width, stringformat width, floatformat digits
MAX_BLOCK_DEPTH = 5  # content blocks inside content blocks
MAX_TAG_DEPTH = 40  # tags inside tags ({% if %} in {% with %} in {% for %}...): Python's stack is not a budget


class TemplateRenderError(ValueError):
    """A template would cost more than a message may (too long, too many loop runs, a filter
    building too much)."""


sandbox = Library()
for _name, _tag in defaulttags.register.tags.items():
    if _name not in _BLOCKED_TAGS:
        sandbox.tags[_name] = _tag


@dataclass
class _Budget:
    """What one render has spent so far (a subject, a body, an HTML body, a webhook payload):
    text written by the nodes that write (literal text, {{ values }}, cycle, firstof...), loop
    runs, content blocks rendered, and the values filters built."""

    written: int = 0
    iterations: int = 0
    blocks: int = 0
    built: int = 0


# The budget of the render in progress: filters are plain functions that never see the context.
_BUDGET: ContextVar[_Budget | None] = ContextVar("template_budget", default=None)


@contextmanager
def _budgeted():
    """Run a render under a fresh budget (content blocks rendered inside it share it)."""
    token = _BUDGET.set(_Budget())
    try:
        yield
    finally:
        _BUDGET.reset(token)


def _spend(*, written: int = 0, iterations: int = 0, blocks: int = 0) -> None:
    budget = _BUDGET.get()
    if budget is None:
        return
    budget.written += written
    budget.iterations += iterations
    budget.blocks += blocks
    if budget.written > MAX_RENDERED_CHARS:
        raise TemplateRenderError(f"the text would be longer than {MAX_RENDERED_CHARS:,} characters")
    if budget.iterations > MAX_LOOP_ITERATIONS:
        raise TemplateRenderError(f"loops ran more than {MAX_LOOP_ITERATIONS:,} times")
    if budget.blocks > MAX_BLOCK_RENDERS:
        raise TemplateRenderError(f"content blocks were rendered more than {MAX_BLOCK_RENDERS:,} times")


def _size(value) -> int:
    """What a value costs to hold: its characters, or its items (a list, a dict); 0 for a number."""
    return len(value) if isinstance(value, (str, list, tuple, dict)) else 0


def _value_check(name: str, size: int) -> None:
    if size > MAX_VALUE_CHARS:
        raise TemplateRenderError(f"|{name} would build a value of {size:,} characters or items; "
                                  f"at most {MAX_VALUE_CHARS:,}")


def _build(name: str, size: int) -> None:
    """Account for a value of `size` that filter `name` built."""
    _value_check(name, size)
    budget = _BUDGET.get()
    if budget is not None:
        budget.built += size
        if budget.built > MAX_BUILT_CHARS:
            raise TemplateRenderError(f"filters built more than {MAX_BUILT_CHARS:,} characters in all")


def _largest_number(value, arg=None) -> int:
    """The largest number written in a filter's argument: "50000000", "-3g", "%050000000d"."""
    numbers = re.findall(r"\d+", str(arg if arg is not None else ""))
    return max((int(n) if len(n) < 10 else 10 ** 10 for n in numbers), default=0)


def _added_size(value, arg=None) -> int:
    """The length of value|add:arg when it concatenates two texts or two lists."""
    return _size(value) + _size(arg) if isinstance(value, (str, list, tuple)) else 0


def _joined_size(value, arg=None) -> int:
    """The length of value|join:arg, from the lengths of its parts (the filter would build it first)."""
    if isinstance(value, str):
        parts, count = len(value), len(value)
    elif isinstance(value, (list, tuple, dict)):
        parts, count = sum(len(v) if isinstance(v, str) else len(str(v)) for v in value), len(value)
    else:
        return 0
    return parts + len(str(arg if arg is not None else "")) * max(count - 1, 0)


def _budgeted_filter(name: str, original, *, width=None, size=None):
    """`original` bounded: `width(value, arg)` above MAX_FILTER_WIDTH is refused, so is a value
    larger than MAX_VALUE_CHARS, before it is built where the filter could multiply its input
    (`size(value, arg)`, the size it would build), after it is built otherwise (a filter without
    `size` builds at most a few times its input and its argument, themselves bounded); every value
    built counts toward the render's budget."""

    @functools.wraps(original)
    def budgeted(value, *args, **kwargs):
        if width is not None and width(value, *args) > MAX_FILTER_WIDTH:
            raise TemplateRenderError(f"|{name}: at most {MAX_FILTER_WIDTH:,}")
        if size is not None:
            _value_check(name, size(value, *args))
        result = original(value, *args, **kwargs)
        if result is not value:
            _build(name, _size(result))
        return result

    return budgeted


for _name, _filter in defaultfilters.register.filters.items():
    sandbox.filters[_name] = _budgeted_filter(
        _name, _filter, width=_largest_number if _name in ("ljust", "rjust", "center", "floatformat", "stringformat")
        else None, size={"join": _joined_size, "add": _added_size}.get(_name))


class _LoopBody(Node):
    """A loop's body as one node (ForNode renders its body node by node): each run is counted
    against the message's budget."""

    child_nodelists = ("nodelist",)

    def __init__(self, nodelist: NodeList):
        self.nodelist = nodelist

    def render(self, context) -> str:
        _spend(iterations=1)
        return self.nodelist.render(context)


@sandbox.tag("for")
def bounded_for(parser, token):
    node = defaulttags.do_for(parser, token)
    node.nodelist_loop = NodeList([_LoopBody(node.nodelist_loop)])
    return node


class _WrittenText(TextNode):
    def render(self, context) -> str:
        _spend(written=len(self.s))
        return self.s


class _WrittenVariable(VariableNode):
    def render(self, context) -> str:
        out = super().render(context)
        _spend(written=len(out))
        return out


class _Written(Node):
    """A tag that writes text itself ({% cycle %}, {% firstof %}, {% verbatim %}...): what it writes
    is counted."""

    child_nodelists = ("nodelist",)

    def __init__(self, node: Node):
        self.nodelist = NodeList([node])

    def render(self, context) -> str:
        out = self.nodelist[0].render_annotated(context)
        _spend(written=len(out))
        return out


class _SandboxParser(Parser):
    """Every node that writes text counts what it writes against the render's budget: literal
    text, {{ values }} and tags without a body. Tags with a body (if, for, with, filter...) write
    what their nodes write; a content block's nodes count for themselves. Tags nest at most
    MAX_TAG_DEPTH deep (deeper, Django would run out of stack rendering them)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.depth = -1  # the template's own nodes are parsed at depth 0, a tag's body one deeper

    def parse(self, parse_until=None):
        self.depth += 1
        try:
            if self.depth > MAX_TAG_DEPTH:
                raise TemplateSyntaxError(f"tags are nested more than {MAX_TAG_DEPTH} deep")
            return super().parse(parse_until)
        finally:
            self.depth -= 1

    def extend_nodelist(self, nodelist, node, token):
        if type(node) is TextNode:
            node = _WrittenText(node.s)
        elif type(node) is VariableNode:
            node = _WrittenVariable(node.filter_expression)
        elif not isinstance(node, ContentBlockNode) and not any(hasattr(node, attr) for attr in node.child_nodelists):
            node.token, node.origin = token, self.origin
            node = _Written(node)
        super().extend_nodelist(nodelist, node, token)


class _SandboxTemplate(Template):
    def compile_nodelist(self):
        parser = _SandboxParser(Lexer(self.source).tokenize(), self.engine.template_libraries,
                                self.engine.template_builtins, self.origin)
        nodelist = parser.parse()
        self.extra_data = parser.extra_data
        return nodelist


ROOTS = ("profile", "traits", "event", "journey", "scores", "links")
# names every render has besides the data: {{ now }}, a loop's {{ forloop }}, Django's True/False/None
BUILTIN_NAMES = frozenset({"now", "forloop", "True", "False", "None", "block"})
_BLOCK_REF = re.compile(r"""{%\s*content_block\s+["']([\w-]+)["']\s*%}""")


class SandboxEngine(Engine):
    default_builtins: list[str] = []

    def from_string(self, template_code):
        return _SandboxTemplate(template_code, engine=self)


class ContentBlockNode(Node):
    def __init__(self, name: str):
        self.name = name

    def render(self, context) -> str:
        _spend(blocks=1)
        renderer = getattr(context, "block_renderer", None)
        return renderer(self.name, context) if renderer else ""


@sandbox.tag("content_block")
def content_block(parser, token):
    """{% content_block "name" %}: the first variant of the named ContentBlock whose rule is true."""
    bits = token.split_contents()
    if len(bits) != 2 or bits[1][0] not in "\"'" or bits[1][-1] != bits[1][0]:
        raise TemplateSyntaxError('content_block takes one quoted block name: {% content_block "offer" %}')
    return ContentBlockNode(bits[1][1:-1])


_ENGINE = SandboxEngine(builtins=[], libraries={}, autoescape=True, string_if_invalid="", debug=False)
_ENGINE.template_builtins = [sandbox]


def _refuse(self, *args, **kwargs):
    raise TypeError("template data is read-only")


_refuse.alters_data = True  # Django's template engine never calls a method marked so


class _Data(dict):
    """A dict whose no-argument mutators ({{ profile.clear }}) cannot be called from a template."""

    clear = popitem = _refuse


class _List(list):
    clear = pop = reverse = sort = _refuse


def plain(value, depth: int = 0):
    """Copy `value` as plain, read-only data: anything else (a model, a function) becomes its text."""
    if depth > 20:
        return None
    if value is None or isinstance(value, (str, int, float, bool, Decimal, datetime, date)):
        return value
    if isinstance(value, dict):
        return _Data({str(k): plain(v, depth + 1) for k, v in value.items()})
    if isinstance(value, (list, tuple, set)):
        return _List(plain(v, depth + 1) for v in value)
    return str(value)


class _NullIsMissing(Variable):
    """A {{ variable }} whose value is null (a trait cleared with null, data sent as null) reads
    as a missing one: it renders empty, |default applies and `missing` lists it, rather than
    the text "None". Tags ({% if x is None %}) and |default_if_none still see the null."""

    def resolve(self, context):
        value = super().resolve(context)
        if value is None:
            raise VariableDoesNotExist("%s is null", (self.var,))
        return value


@functools.lru_cache(maxsize=1024)
def _compiled(text: str):
    """A parsed template per text: parsing costs more than rendering, and a text never changes
    what it parses to (a compiled Template only reads the context it is rendered with)."""
    template = _ENGINE.from_string(text)
    for node in template.nodelist.get_nodes_by_type(VariableNode):
        expr = node.filter_expression
        if type(expr.var) is Variable and expr.var.lookups and \
                not any(f[0].__name__ == "default_if_none" for f in expr.filters):
            expr.var = _NullIsMissing(expr.var.var)
    return template


@functools.lru_cache(maxsize=1024)
def _plain_parts(text: str) -> tuple | None:
    """A text that is only literal text and plain {{ a.b.c }} variables (no filters, tags or
    literals), as (text or (lookups, name)) parts; None when it needs Django's renderer."""
    parts = []
    for node in _compiled(text).nodelist:
        if isinstance(node, TextNode):
            parts.append(node.s)
            continue
        if not isinstance(node, VariableNode):
            return None
        expr = node.filter_expression
        var = expr.var
        if expr.filters or not isinstance(var, Variable) or var.literal is not None or not var.lookups \
                or var.lookups[0] == "now":
            return None
        parts.append((var.lookups, var.var))
    return tuple(parts)


_MISSING = object()


def _lookup(data: dict, lookups: tuple):
    """Django's lookup (key, else index) over plain dicts and lists; _MISSING when it does not
    resolve or is null; None when Django would do more (an attribute, a method, another type)."""
    current = data
    for bit in lookups:
        kind = type(current)
        if kind is dict:
            if bit in current:
                current = current[bit]
            elif hasattr(dict, bit) or any(type(k) is not str for k in current):
                return None  # a method, or a key that plain() would have turned into this text
            else:
                return _MISSING
        elif kind is list or kind is tuple:
            if hasattr(kind, bit):
                return None
            try:
                current = current[int(bit)]
            except (ValueError, IndexError):
                return _MISSING
        else:
            return None
    if current is None:  # null renders as a missing value does (_NullIsMissing)
        return _MISSING
    return current if current is _MISSING or type(current) in (str, int, bool) else None


def _render_plain(parts: tuple, context: dict, autoescape: bool) -> tuple[str, list[str]] | None:
    """Render a text of `_plain_parts` straight from the caller's dicts: what Django renders
    (str, int, bool values; a missing one is empty and reported), without building a
    Context or a read-only copy of the data (~70 us a message). None: use Django."""
    out, missing = [], []
    for part in parts:
        if type(part) is str:
            out.append(part)
            continue
        lookups, name = part
        value = _lookup(context, lookups)
        if value is None:
            return None
        if value is _MISSING:
            if lookups[0] not in BUILTIN_NAMES:  # a root nothing gives (trait.x) is missing too
                missing.append(name)
            continue
        out.append(conditional_escape(value) if autoescape else str(value))
    return "".join(out), missing


def text_render(*, text: str, data: dict, autoescape: bool = False) -> str:
    """One template text (e.g. a webhook payload value) rendered with `data` (plain dicts and
    values): the parsed template is cached per text, plain variables are read without Django.
    Raises TemplateRenderError when it would cost too much (the MAX_ bounds above)."""
    return payload_render(payload={"text": text}, data=data, autoescape=autoescape, what="")["text"]


def payload_render(*, payload: dict, data: dict, autoescape: bool = False, what: str = "payload") -> dict:
    """A webhook payload: its text values rendered with `data`, the others as they are. One
    budget for the whole payload (one request body, at most MAX_RENDERED_CHARS of rendered text);
    raises TemplateRenderError naming the value that went over it ("payload 'key': ...", or
    without a name when `what` is empty)."""
    out, total = {}, 0
    with _budgeted():
        for key, value in payload.items():
            if not isinstance(value, str):
                out[key] = value
                continue
            try:
                out[key] = _text(value, data, autoescape)
                total += len(out[key])
                if total > MAX_RENDERED_CHARS:
                    raise TemplateRenderError(f"the text would be longer than {MAX_RENDERED_CHARS:,} characters")
            except TemplateRenderError as exc:
                raise TemplateRenderError(f"{what} {key!r}: {exc}" if what else str(exc)) from None
    return out


def _text(text: str, data: dict, autoescape: bool) -> str:
    parts = _plain_parts(text)
    if parts is not None and (fast := _render_plain(parts, data, autoescape)) is not None:
        _spend(written=len(fast[0]))  # written without Django's nodes, which count for themselves
        return fast[0]
    return _compiled(text).render(Context(plain(data), autoescape=autoescape))


def template_check(*, text: str) -> str | None:
    """The syntax error of a template text, or None (shown at save time in the admin). An opening
    {{ or {% without its closing is one too: Django would send it as literal text."""
    try:
        compiled = _ENGINE.from_string(text)
    except TemplateSyntaxError as exc:
        return str(exc)
    for node in compiled.nodelist.get_nodes_by_type(TextNode):
        for opening, closing in (("{{", "}}"), ("{%", "%}")):
            if (at := node.s.find(opening)) >= 0:
                return f"{opening} without a closing {closing} near {node.s[at:at + 40]!r}"
    return None


@dataclass
class Rendered:
    subject: str
    body: str
    html_body: str
    locale: str
    missing: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def content_hash(self) -> str:
        return hashlib.sha256("\x1f".join((self.subject, self.body, self.html_body)).encode()).hexdigest()


def template_variant(*, template: MessageTemplate, locale: str) -> TemplateVariant | None:
    """The variant a customer whose locale is `locale` gets: the variant tagged with the whole tag,
    then with the tag less its last subtag, and so on (`zh-Hant-TW`, `zh-Hant`, `zh`; `pt_BR` is
    `pt-BR`, then `pt`), tags compared as BCP 47 compares them (`locales.locale_fallbacks`); None
    (the template itself) when none is tagged so or the locale is no language tag."""
    wanted = locale_fallbacks(locale or "")
    if not wanted:
        return None
    variants = {}
    for variant in sorted(template.variants.all(), key=lambda v: v.pk or 0):
        variants[locale_key(variant.locale)] = variant  # the latest of two saved before case was compared
    for candidate in wanted:
        if candidate in variants:
            return variants[candidate]
    return None


def variant_locale_clean(*, locale: str) -> str:
    """A variant's language tag as saved: canonical (`pt_BR` -> `pt-BR`, `FR` -> `fr`). Raises
    JourneyError(field "locale") saying what to write for one that is no language tag."""
    tag = locale_clean(locale)
    if not tag:
        raise JourneyError(f"give the variant's language: {LOCALE_HELP}", field="locale")
    if len(tag) > TemplateVariant._meta.get_field("locale").max_length:
        raise JourneyError(f"{tag!r} is too long for a variant's language tag; write the language and region only "
                           "(e.g. pt-BR)", field="locale")
    return tag


def variant_locale_duplicates(*, locales: list[str]) -> list[str]:
    """For the language tags of one template's variants, in order, why each cannot be saved
    beside the ones before it ("" when it can): tags compare ignoring case, as customers' locales
    are matched, so `fr-ca` after `fr-CA` would be a second variant for the same customers."""
    seen: dict[str, int] = {}
    problems = []
    for i, locale in enumerate(locales):
        first = locales[seen.setdefault(locale_key(locale), i)]
        problems.append("" if seen[locale_key(locale)] == i else
                        f"there is a variant for {first!r} already (language tags are the same whatever their case); "
                        f"edit that one, or write another tag here")
    return problems


def _missing(template, context: Context) -> list[str]:
    """Variables that did not resolve and have no |default: under a root the data has (profile.x,
    event.y), or under a root nothing gives (trait.x, a misspelt root); not those of a name the
    template binds itself (a loop variable, {% with %}), which are not there after the render."""
    missing = []
    bound = template_scope(template)[0]
    for node in template.nodelist.get_nodes_by_type(VariableNode):
        expr = node.filter_expression
        var = expr.var
        if not isinstance(var, Variable) or var.literal is not None or var.lookups is None:
            continue
        if var.lookups[0] in bound or var.lookups[0] in BUILTIN_NAMES or \
                any(f[0].__name__ in ("default", "default_if_none") for f in expr.filters):
            continue
        try:
            with context.bind_template(template):
                var.resolve(context)
        except VariableDoesNotExist:
            missing.append(var.var)
    return missing


def _expressions(value, depth: int = 0):
    """The filter expressions in a node's attribute: a value, a list or dict of them, an {% if %}
    condition's operands (not in nested nodes: each node is read for itself)."""
    if depth > MAX_TAG_DEPTH or value is None or isinstance(value, (str, Node)):
        return
    if isinstance(value, FilterExpression):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _expressions(item, depth + 1)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _expressions(item, depth + 1)
    elif isinstance(value, TokenBase):
        for name in ("first", "second", "value"):
            yield from _expressions(getattr(value, name, None), depth + 1)


def template_scope(template) -> tuple[frozenset[str], tuple[str, ...]]:
    """(the names a compiled template binds itself: loop variables, {% with %} names, `as` targets;
    the variables it reads, in order, whose root is none of those, no root of the data (ROOTS) and
    no built-in name: they can never have a value). Kept on the (cached) template."""
    found = getattr(template, "_scope", None)
    if found is not None:
        return found
    bound, read = set(), []
    for node in template.nodelist.get_nodes_by_type(Node):
        bound.update(getattr(node, "loopvars", None) or ())
        if isinstance(getattr(node, "extra_context", None), dict):
            bound.update(node.extra_context)
        for name in ("asvar", "variable_name", "var_name"):
            if isinstance(getattr(node, name, None), str):
                bound.add(getattr(node, name))
        for attr, value in vars(node).items():
            if attr in ("token", "origin") or attr in node.child_nodelists:
                continue
            for expr in _expressions(value):
                variables = [arg for func, args in expr.filters for lookup, arg in args if lookup]
                if not isinstance(node, FilterNode):  # {% filter lower %} reads a `var` of its own
                    variables.insert(0, expr.var)
                read.extend(v.var for v in variables if isinstance(v, Variable) and v.lookups)
    unknown = tuple(dict.fromkeys(
        name for name in read if name.split(".")[0] not in bound | set(ROOTS) | BUILTIN_NAMES))
    template._scope = (frozenset(bound), unknown)
    return template._scope


def template_unknown_names(*, text: str) -> list[str]:
    """Variables of a template text that no message's data can have (`trait.first_name`, where the
    roots are profile, traits, event, journey, scores, links and now, or names the template binds
    itself): they always render empty. Shown as a warning when the template is saved; a variable
    under a known root that a customer may lack is fine (optional). None if it does not parse."""
    try:
        return list(template_scope(_compiled(text))[1])
    except TemplateSyntaxError:
        return []


def template_unknown_warning(*, text: str) -> str:
    """A warning naming the variables of `text` that can never have a value, with the root that
    was probably meant; "" when there are none."""
    names = template_unknown_names(text=text)
    if not names:
        return ""
    hints = []
    for name in names:
        root = name.split(".")[0]
        close = difflib.get_close_matches(root, (*ROOTS, "now"), n=1)
        hints.append(f"{name}" + (f" (did you mean {close[0]}{name[len(root):]}?)" if close else ""))
    return (f"{', '.join(hints)}: no message has such a value, so it renders empty; the data's roots are "
            f"{', '.join(ROOTS)} and now")


def content_blocks_missing(*, text: str) -> list[str]:
    """The content blocks a template text includes that do not exist (a typo in a block's name
    would send the message with that part empty); none if the text does not parse."""
    names = content_block_names(text)
    if not names:
        return []
    known = set(ContentBlock.objects.filter(name__in=names).values_list("name", flat=True))
    return sorted(names - known)


def content_block_missing_error(*, text: str) -> str:
    """Why a template's `text` cannot be saved because of a content block it names that does not
    exist (and the nearest existing name), else ""."""
    missing = content_blocks_missing(text=text)
    if not missing:
        return ""
    close = difflib.get_close_matches(missing[0], ContentBlock.objects.values_list("name", flat=True), n=1)
    return (f"content block {missing[0]!r} does not exist" + (f" (did you mean {close[0]!r}?)" if close else "")
            + "; create it under Content blocks or fix the name")


def _block_renderer(blocks: dict[str, ContentBlock], data: dict, result: Rendered):
    from journeys.rules import compile_rule
    from journeys.rules import RuleContext

    stack: list[str] = []

    def render(name: str, context: Context) -> str:
        if name in stack:
            result.errors.append(f"content block {name!r} includes itself ({' -> '.join([*stack, name])})")
            return ""
        if len(stack) >= MAX_BLOCK_DEPTH:
            result.errors.append(f"content blocks nested more than {MAX_BLOCK_DEPTH} deep ({' -> '.join(stack)})")
            return ""
        if name not in blocks:  # a block inside a block: looked up once
            blocks[name] = ContentBlock.objects.filter(name=name).first()
        block = blocks.get(name)
        if block is None:
            result.errors.append(f"content block {name!r} does not exist")
            return ""
        stack.append(name)
        try:
            return _block_body(name, block, context)
        finally:
            stack.pop()

    def _block_body(name: str, block: ContentBlock, context: Context) -> str:
        rule_ctx = RuleContext(event=data.get("event") or {}, profile=data.get("profile") or {}, context={},
                               journey=data.get("journey") or {}, now=data.get("now") or timezone.now())
        for variant in block.variants or []:
            rule = (variant or {}).get("rule") or ""
            if rule:
                outcome = compile_rule(rule).evaluate(rule_ctx)
                if outcome.error:
                    result.errors.append(f"block {name}: {outcome.error}")
                if not outcome.value:
                    continue
            try:
                return _compiled(str(variant.get("body") or "")).render(context)
            except TemplateSyntaxError as exc:
                result.errors.append(f"block {name}: {exc}")
                return ""
        return ""

    return render


def content_block_names(text: str) -> set[str]:
    """The blocks a template text includes ({% content_block "name" %}); none if it does not parse."""
    try:
        return {node.name for node in _compiled(text).nodelist.get_nodes_by_type(ContentBlockNode)}
    except TemplateSyntaxError:
        return set()


def content_block_cycle(*, name: str, variants: list) -> str | None:
    """Why a content block with these variants cannot be saved: it would include itself, directly
    or through other blocks, or nest blocks deeper than MAX_BLOCK_DEPTH; None when it is fine."""
    def includes(block_name: str, block_variants) -> set[str]:
        return {n for v in block_variants or [] if isinstance(v, dict) for n in content_block_names(str(v.get("body") or ""))}

    stored = {b.name: b.variants for b in ContentBlock.objects.exclude(name=name)}
    stack = [(child, [name, child]) for child in sorted(includes(name, variants))]
    while stack:
        current, path = stack.pop()
        if current == name:
            return f"it would include itself: {' -> '.join(path)}"
        if len(path) > MAX_BLOCK_DEPTH + 1:
            return f"content blocks would nest more than {MAX_BLOCK_DEPTH} deep: {' -> '.join(path)}"
        if current in path[:-1]:
            continue  # a cycle among other blocks; refused when they were saved
        stack.extend((child, [*path, child]) for child in sorted(includes(current, stored.get(current))))
    return None


def json_strings(value, depth: int = 0):
    """`value` with every text JSON-escaped as it goes between the quotes of a JSON string
    (quotes, backslashes and control characters escaped): what a JSON document's template reads,
    so that customer data can never end a string and add keys to the document."""
    if depth > 20:
        return None
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)[1:-1]
    if isinstance(value, dict):
        return {k: json_strings(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [json_strings(v, depth + 1) for v in value]
    return value


def _json_body(text: str) -> bool:
    """Whether a body is a JSON document's template (a webhook channel's body written as JSON)."""
    return text.lstrip()[:1] in ("{", "[")


def template_render(*, template: MessageTemplate, context: dict, locale: str = "", json_body: bool = False) -> Rendered:
    """Render subject, text body and HTML body of `template` (its locale variant when
    there is one) with a plain copy of `context`. Text parts are not HTML-escaped; the
    HTML part is. Missing variables render empty and are listed in `missing`; a missing or
    self-including content block renders empty and is listed in `errors`. Raises
    TemplateRenderError when a part would be too costly (see the MAX_ bounds above).

    `json_body` (a webhook channel's message): a body written as JSON (it starts with { or [)
    reads every text JSON-escaped (`json_strings`) and must render to valid JSON, else
    TemplateRenderError; a body that is not JSON is sent as text, as before."""
    variant = template_variant(template=template, locale=locale)
    subject = (variant.subject if variant and variant.subject else template.subject) or ""
    body = (variant.body if variant and variant.body else template.body) or ""
    html = (variant.html_body if variant and variant.html_body else template.html_body) or ""
    names = set(_BLOCK_REF.findall(subject + body + html))
    blocks = {b.name: b for b in ContentBlock.objects.filter(name__in=names)} if names else {}
    result = Rendered("", "", "", locale=variant.locale if variant else "")
    label = f"template {template.name!r}" + (f" ({variant.locale})" if variant else "")
    parts, data = [], None
    as_json = json_body and _json_body(body)
    for part, text, escape in (("subject", subject, False), ("body", body, False), ("HTML body", html, True)):
        if not text:  # most messages have no HTML part: nothing to render or report
            parts.append("")
            continue
        source = context
        if as_json and part == "body":
            source, data = json_strings(context), None  # this part alone reads escaped texts
        quick = _plain_parts(text)
        quick = _render_plain(quick, source, escape) if quick is not None and type(source) is dict else None
        if quick is not None:
            rendered = quick[0]
            result.missing.extend(m for m in quick[1] if m not in result.missing)
        else:
            if data is None:
                data = plain(source)
                data["now"] = context.get("now") if isinstance(context.get("now"), datetime) else None
            ctx = Context(data, autoescape=escape)
            ctx.block_renderer = _block_renderer(blocks, data, result)
            compiled = _compiled(text)
            try:
                with _budgeted():  # each part has its own
                    rendered = compiled.render(ctx)
            except TemplateRenderError as exc:
                raise TemplateRenderError(f"{label}, {part}: {exc}") from None
            result.missing.extend(m for m in _missing(compiled, ctx) if m not in result.missing)
        if len(rendered) > MAX_RENDERED_CHARS:
            raise TemplateRenderError(f"{label}, {part}: the text would be longer than {MAX_RENDERED_CHARS:,} "
                                      "characters")
        if as_json and part == "body":
            data = None  # the other parts read the texts as they are
            try:
                json.loads(rendered)
            except ValueError as exc:
                raise TemplateRenderError(
                    f"{label}, body: not valid JSON once rendered ({exc}); values are inserted JSON-escaped, so "
                    "a text value belongs between quotes (\"{{ journey.text }}\")") from None
        parts.append(rendered)
    result.subject, result.body, result.html_body = parts[0].strip().replace("\n", " "), parts[1], parts[2]
    return result
