"""User-facing errors: one clear line, a non-zero exit, no traceback."""
from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (config, model, data). Printed as one line."""

    exit_code = 2

    def __init__(self, message: str, fix: str | None = None):
        self.message = message
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = self.message.strip().replace("\n", " ")
        return f"{text} -- {self.fix.strip()}" if self.fix else text


class StageError(UserError):
    """A stage failed on the user's model (trace, convert, ...); names the stage."""

    def __init__(self, stage: str, message: str, fix: str | None = None):
        super().__init__(f"{stage} failed: {message}", fix)
        self.stage = stage


class UnsupportedOpError(UserError):
    """The emulator met an op it does not implement."""

    def __init__(self, op_type: str, op_name: str):
        super().__init__(
            f"emulator: MIL op type '{op_type}' (op '{op_name}') is not implemented",
            "use backend=coreml on macOS, or add the op to pipeline/emulator/ops/",
        )
        self.op_type = op_type
        self.op_name = op_name
