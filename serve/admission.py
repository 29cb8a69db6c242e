"""A chat request's place in the count that --max-queue limits (serve/service.py `Service.admit`): taken in the same
step as the check, given back once when the request has ended, whichever way."""

from __future__ import annotations

from starlette.responses import StreamingResponse


class Admission:
    """One admitted chat request's place in the count of `Service.admit` (release it once, when it ends)."""

    def __init__(self, service):  # a serve.service.Service (its `admitted` count)
        self.service, self.held = service, True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.service.admitted -= 1


class AdmittedStream(StreamingResponse):
    """A stream that releases its request's admission (Service.admit) when Starlette has run it: after the
    last event, or at once if the client left before it began (its generator then never starts)."""

    admission = None

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self.admission is not None:
                self.admission.release()
