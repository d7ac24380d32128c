"""Reading a user's CSV file as text, with one-line errors: shared by the steering references and sysid trajectories."""

from pathlib import Path


def read_csv_text(path: Path, what: str, error: type[Exception]) -> str:
    """
    Return the text of a UTF-8 CSV file (a byte-order mark, which spreadsheet programs write, is dropped).

    Raises `error` with one line naming the file and the reason for an unreadable file, bytes that are not UTF-8 and NUL
    bytes (binary junk). `what` names the file in the message, e.g. "reference CSV".
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read the {what}: {exc.strerror or exc}.") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise error(
            f"{path}: not a UTF-8 text CSV file: byte 0x{raw[exc.start]:02x} on line {line} is not UTF-8."
        ) from None
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        raise error(f"{path}: not a text CSV file: NUL byte on line {line}.")
    return text
