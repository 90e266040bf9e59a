"""Type stubs for the compiled fastproxy._actions extension (ext/fastproxy/_actions.pyx)."""

import re
from collections.abc import Sequence
from typing import Any, Final, final

from fastproxy import routeconf
from fastproxy._router import RequestContext

REDIRECT: Final = 1
RESPOND: Final = 2
VARIABLES: Final[dict[str, int]]

@final
class Template:
    def __init__(self, template: routeconf.Template) -> None: ...
    def render_for(
        self, ctx: RequestContext, groups: re.Match[bytes] | None = None
    ) -> bytes: ...

@final
class HeaderEdits:
    drop: tuple[bytes, ...]
    def __init__(self, edits: routeconf.HeaderEdits) -> None: ...
    def render_for(self, ctx: RequestContext) -> bytes: ...

class Action:
    kind: int
    response_edits: HeaderEdits | None

@final
class ProxyAction(Action):
    group: Any
    request_edits: HeaderEdits | None
    rewrites: bool
    def __init__(
        self,
        group: Any,
        rewrite: routeconf.Rewrite | None = None,
        request_headers: routeconf.HeaderEdits | None = None,
        response_headers: routeconf.HeaderEdits | None = None,
        merge_slashes: bool = True,
    ) -> None: ...
    def target_for(self, ctx: RequestContext) -> bytes | None: ...
    def upstream_host_for(self, ctx: RequestContext, host: bytes) -> bytes: ...

@final
class LocalAction(Action):
    status: int
    def __init__(
        self,
        kind: int,
        status: int,
        reason: str,
        body: routeconf.Template | None = None,
        headers: Sequence[tuple[str, routeconf.Template]] = (),
        response_headers: routeconf.HeaderEdits | None = None,
    ) -> None: ...
    def answer_for(
        self, ctx: RequestContext, date: bytes, keep: bool = True, head_only: bool = False
    ) -> bytes: ...
