"""Templates that try to burn the gateway's CPU or memory, each with the words of its refusal.

On the unbounded sandbox each of these stalled the event loop for seconds or more, took
hundreds of megabytes (or all the memory there is), or crashed the process (a deeply nested
tuple is hashed by recursion in C).
"""

from __future__ import annotations

import json

BIG = "{% set xs = ['A' * 60000] * 100000 %}"  # 100000 references to one 60000-character string
# 90000 loop iterations of a few milliseconds each (counting 32000 words): well under the step
# cap, so the time limit is what stops it, on any machine
SLOW = "{% set s = 'a ' * 32000 %}{% for i in range(90000) %}{% if s|wordcount %}{% endif %}{% endfor %}"

# t30 and l30: 2**30 paths through 31 tuples (lists): hashing, printing or walking them is
# exponential, building them is not
DAG = "{% set t0 = (1, 1) %}{% set l0 = [1, 1] %}" + "".join(
    f"{{% set t{i} = (t{i - 1}, t{i - 1}) %}}{{% set l{i} = [l{i - 1}, l{i - 1}] %}}" for i in range(1, 31)
)
CPU = "steps|time limit"  # whichever comes first: it depends on the machine

# name -> (system prompt, a regex its refusal matches)
ATTACKS: dict[str, tuple[str, str]] = {
    # CPU: loops, recursion, slow steps
    "three loops of 450 (the review's case)": (
        "{% for i in range(450) %}{% for j in range(450) %}{% for k in range(450) %}"
        "{% endfor %}{% endfor %}{% endfor %}",
        CPU,
    ),
    "three loops of 100000": (
        "{% for i in range(100000) %}{% for j in range(100000) %}{% for k in range(100000) %}"
        "{% endfor %}{% endfor %}{% endfor %}",
        CPU,
    ),
    "slow steps": (SLOW, "time limit"),
    "recursive macro": ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "RecursionError"),
    "exponential macro": (
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
        CPU,
    ),
    "recursive loop": (
        "{% for x in range(1000) recursive %}{{ loop(range(1000)) }}{% endfor %}",
        "Recursion",
    ),
    "map over loops": (
        "{% for i in range(100000) %}{{ range(100000)|map('string')|list|length }}{% endfor %}",
        CPU,
    ),
    # memory: one operation that builds a huge value
    "string repeated (the review's case)": ("{% set s = 'A' * 200000000 %}", "repeated string"),
    "list repeated": ("{% set xs = [0] * 200000000 %}", "repeated list"),
    "power": ("{{ 10 ** 10000000 }}", "bits"),
    "products": ("{% set n = 10 ** 2000 %}{{ n * n * n * n * n }}", "bits"),
    "format width": ("{{ '{:>100000000}'.format(tenant) }}", "formatted field"),
    "format precision": ("{{ '{:.100000000f}'.format(1.5) }}", "formatted field"),
    "nested format width": ("{{ '{:>{w}}'.format(tenant, w=100000000) }}", "formatted field"),
    "format_map width": ("{{ '{t:>100000000}'.format_map({'t': tenant}) }}", "formatted field"),
    "format, many fields": ("{{ ('{0}' * 20000).format('x' * 60000) }}", "formatted string"),
    "%-format width": ("{{ '%100000000s' % tenant }}", "%-formatted"),
    "%-format star width": ("{{ '%*s'|format(100000000, tenant) }}", "%-formatted"),
    "%-format precision": ("{{ '%.100000000f' % 1.5 }}", "%-formatted"),
    "%-format, many fields": ("{{ ('%(a)s' * 10000) % {'a': 'x' * 60000} }}", "%-formatted"),
    "%-format in a test": ("{{ '%100000000s' is odd }}", "takes numbers"),
    "center filter": ("{{ tenant|center(100000000) }}", "centered"),
    "str.center": ("{{ tenant.center(100000000) }}", r"str\.center"),
    "str.zfill": ("{{ tenant.zfill(100000000) }}", r"str\.zfill"),
    "str.expandtabs": ("{{ ('\t' * 1000).expandtabs(100000000) }}", "tabs expanded"),
    "indent": ("{{ ('x\n' * 1000)|indent(100000) }}", "indented"),
    "wordwrap": ("{{ ('a' * 60000)|wordwrap(1, wrapstring='b' * 1000) }}", "wrapped"),
    "str.replace": ("{% set s = 'a' * 60000 %}{{ s.replace('', s) }}", "replaced"),
    "replace filter": ("{% set s = 'a' * 60000 %}{{ s|replace('a', s) }}", "replaced"),
    "join filter": ("{{ (['x' * 60000] * 100000)|join }}", "joined"),
    "str.join": ("{{ ''.join(['x' * 60000] * 100000) }}", "joined"),
    "join of a range": ("{{ range(100000)|join(',') }}", "joined"),
    "~ doubling in a namespace": (
        "{% set ns = namespace(s='A') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "joined with ~",
    ),
    "+ doubling in a namespace": (
        "{% set ns = namespace(s='A') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "joined string",
    ),
    "range too big": ("{{ range(1000000000)|list|length }}", "Range too big"),
    "batch filled": ("{{ [1]|batch(100000000, 'x')|list }}", "batch"),
    "slice into many": ("{{ [1]|slice(100000000)|list }}", "slices"),
    "round to -10**8 digits": ("{{ 5|round(-100000000) }}", "rounding"),
    "floor to 10**8 digits": ("{{ 5|round(100000000, 'floor') }}", "rounding"),
    "int.to_bytes": ("{{ (1).to_bytes(100000000, 'big') }}", "not allowed"),
    "str.translate": ("{% set s = 'a' * 60000 %}{{ s.translate({97: s}) }}", "not allowed"),
    "lipsum": ("{{ lipsum(100000, max=100000) }}", "'lipsum' is undefined"),
    # memory: many operations, each bounded
    "output of a loop": ("{% for i in range(100000) %}{{ 'x' * 60000 }}{% endfor %}", "rendered text"),
    "macro body": (
        "{% macro m() %}{% for i in range(100000) %}{{ 'x' * 60000 }}{% endfor %}{% endmacro %}{{ m() }}",
        "rendered text|in all",
    ),
    "strings built in a loop": (
        "{% for i in range(100000) %}{% set s = 'x' * 60000 %}{% endfor %}",
        "in all",
    ),
    "slices in a loop": (
        "{% set s = 'x' * 60000 %}{% for i in range(100000) %}{% set t = s[::-1] %}{% endfor %}",
        "in all",
    ),
    "sum of lists (quadratic)": ("{{ ([[1]] * 100000)|sum(start=[]) }}", "numbers only"),
    # one C call that turns a huge container into text, or compares it
    "a list as text": (BIG + "{{ xs }}", "text of a value"),
    "string filter": (BIG + "{{ xs|string }}", "text of a value"),
    "~ with a list": (BIG + "{{ 'a' ~ xs }}", "text of a value"),
    "pprint": (BIG + "{{ xs|pprint }}", "pretty-printed"),
    "tojson": (BIG + "{{ xs|tojson }}", "JSON"),
    "tojson indent": ("{{ [[[1]]]|tojson(indent=100000000) }}", "JSON"),
    "key quoted in an error": (BIG + "{{ {}[xs] }}", "an index"),
    "item quoted in an error": (BIG + "{{ [1].index(xs) }}", "an argument"),
    "sort": (BIG + "{{ xs|sort|length }}", "sorted"),
    "max": (BIG + "{{ xs|max|length }}", "sorted"),
    "unique": (BIG + "{{ xs|unique|list|length }}", "sorted"),
    "groupby": (BIG + "{{ xs|groupby(0)|list|length }}", "sorted"),
    "dictsort": (BIG + "{{ dict(a=xs, b=xs)|dictsort(by='value')|length }}", "sorted"),
    "in": (BIG + "{{ ('A' * 59999 ~ 'B') in xs }}", "compared"),
    "==": (BIG + "{{ xs == xs[:] }}", "compared"),
    "in test": (BIG + "{{ 'B' is in xs }}", "compared"),
    "loop.changed": (BIG + "{% for i in range(3) %}{{ loop.changed(xs) }}{% endfor %}", "loop.changed"),
    "shared tuples hashed": (DAG + "{{ {t30: 1} }}", "a key would be"),
    "shared lists in a namespace": (DAG + "{% set ns = namespace(x=l30) %}{% set ns.x = l30 %}", CPU),
    "deep tuple hashed (a crash)": (
        "{% set ns = namespace(x=()) %}{% for i in range(100000) %}{% set ns.x = (ns.x,) %}{% endfor %}"
        "{{ ns.x in {} }}",
        "nested more than",
    ),
}

RENDER_ONLY = {  # load fine, fail only when rendered
    "computed attribute": "{% set a = '__cla' ~ 'ss__' %}{{ tenant|attr(a) }}",
    "str.format reaching internals": "{{ '{0.__class__}'.format(tenant) }}",
    "undefined variable": "Hello {{ compnay }}",
}


def version(source: str, number: str = "2") -> str:
    """A template file with this system prompt."""
    return f'version: "{number}"\nsystem: {json.dumps(source)}\n'  # a JSON string is YAML too
