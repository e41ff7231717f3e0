"""Turn expected failures into one clean line and a non-zero exit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

from common.bert import BertError
from common.data import DataError
from common.identity import EnrolmentError
from common.keys import KeyFileError
from common.licences import LicenceError
from common.local_federation import FederationError
from common.policy import PolicyError
from common.privacy import PrivacyError
from common.receipts import ReceiptError
from common.text import TextDataError
from server.ledger import LedgerError
from server.release import ReleaseError

__all__ = ["err_console", "user_errors"]

err_console = Console(stderr=True)


@contextmanager
def user_errors() -> Iterator[None]:
    try:
        yield
    except (
        PolicyError,
        DataError,
        TextDataError,
        BertError,
        PrivacyError,
        LedgerError,
        FederationError,
        KeyFileError,
        EnrolmentError,
        LicenceError,
        ReceiptError,
        ReleaseError,
        FileExistsError,
    ) as err:
        err_console.print(
            f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(code=1) from None
