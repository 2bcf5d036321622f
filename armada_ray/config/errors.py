"""The one exception of a bad config, override or input (CLI exit code 2)."""

from __future__ import annotations

from armada_ray.config.redact import redact_url_credentials


class ConfigError(ValueError):
    """A config, override or input problem the user can fix (CLI exit code 2)."""

    def __init__(self, problems: list[str] | str):
        # a message never carries a key given inside a URL (user:KEY@host): the lines echo the values given
        self.problems = [redact_url_credentials(p) for p in ([problems] if isinstance(problems, str) else problems)]
        super().__init__("\n".join(self.problems))
