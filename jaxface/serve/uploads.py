"""multipart/form-data uploads read into memory as the body streams in, with the size limit enforced
while reading.

Starlette's own form parser spools files over 1 MB to a temporary file on disk; uploads here must
never touch the disk, and an oversized upload must be refused as soon as it crosses the limit rather
than after the whole body is buffered. So the body is fed chunk by chunk to python-multipart's
low-level parser, each file part collected in a bytearray.
"""
from __future__ import annotations

import dataclasses

from python_multipart.multipart import MultipartParser, parse_options_header

# Room for the part headers and boundaries around a file of the maximum size.
_MULTIPART_OVERHEAD = 16 * 1024


class UploadError(ValueError):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = int(status), code, message


@dataclasses.dataclass
class Part:
    name: str
    filename: str | None
    content_type: str | None
    data: bytearray = dataclasses.field(default_factory=bytearray)


def _megabytes(n: int) -> str:
    return f"{n / (1024 * 1024):.3g} MB"


async def read_parts(request, *, max_file_bytes: int, max_files: int) -> list[Part]:
    """The parts of a multipart/form-data request, in order. Raises UploadError (413 as soon as one
    file passes max_file_bytes or more than max_files arrive, 415 for another content type, 400 for
    a malformed body)."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or not params.get(b"boundary"):
        raise UploadError(415, "not_multipart", "send the image as multipart/form-data "
                          "(e.g. curl -F file=@face.jpg URL)")
    declared = request.headers.get("content-length")
    max_body = max_files * (max_file_bytes + _MULTIPART_OVERHEAD)
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        raise UploadError(413, "upload_too_large",
                          f"the request body is {_megabytes(int(declared))}; the limit is {_megabytes(max_file_bytes)} "
                          f"per file and {max_files} file(s) per request")

    parts: list[Part] = []
    header_field = bytearray()
    header_value = bytearray()
    headers: dict[str, bytes] = {}
    failure: list[UploadError] = []

    def on_part_begin():
        headers.clear()

    def on_header_field(data, start, end):
        header_field.extend(data[start:end])

    def on_header_value(data, start, end):
        header_value.extend(data[start:end])

    def on_header_end():
        headers[bytes(header_field).decode("latin-1").lower()] = bytes(header_value)
        header_field.clear()
        header_value.clear()

    def on_headers_finished():
        _, disposition = parse_options_header(headers.get("content-disposition", b""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        filename = disposition.get(b"filename")
        ctype = headers.get("content-type")
        parts.append(Part(name, None if filename is None else filename.decode("utf-8", "replace"),
                          None if ctype is None else ctype.decode("latin-1")))
        files = sum(1 for p in parts if p.filename is not None)
        if files > max_files and not failure:
            failure.append(UploadError(413, "too_many_files",
                                       f"more than {max_files} files in one request; send at most {max_files}"))

    def on_part_data(data, start, end):
        part = parts[-1]
        part.data.extend(data[start:end])
        if len(part.data) > max_file_bytes and not failure:
            failure.append(UploadError(413, "upload_too_large",
                                       f"{part.filename or part.name!r} is larger than the limit of "
                                       f"{_megabytes(max_file_bytes)} per file"))

    parser = MultipartParser(params[b"boundary"], {
        "on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
    })
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if failure:
                raise failure[0]  # stop reading: the rest of the body is never buffered
        parser.finalize()
    except UploadError:
        raise
    except Exception as err:  # noqa: BLE001 - python-multipart's errors for a malformed body
        raise UploadError(400, "bad_multipart", f"malformed multipart body ({err})") from None
    if failure:
        raise failure[0]
    return parts
