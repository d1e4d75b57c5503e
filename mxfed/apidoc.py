"""Generates ``docs/api.md``, the gRPC API reference, from the comments in ``protos/``.

``python -m mxfed.apidoc`` rewrites it; a test regenerates it and fails when
the committed page is stale, and lists RPCs and fields without a comment.
The page says, per RPC, who may call it (``mxfed/internal_access.py``).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from mxfed.internal_access import access_for
from mxfed.protogen import PROTO_ROOT, REPO_ROOT, proto_files

API_PAGE = REPO_ROOT / "docs" / "api.md"

# SourceCodeInfo paths (descriptor.proto field numbers).
_FILE_MESSAGE = 4
_FILE_ENUM = 5
_FILE_SERVICE = 6
_MESSAGE_FIELD = 2
_MESSAGE_NESTED = 3
_MESSAGE_ENUM = 4
_ENUM_VALUE = 2
_SERVICE_METHOD = 2

_SCALARS = {
    descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE: "double",
    descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT: "float",
    descriptor_pb2.FieldDescriptorProto.TYPE_INT64: "int64",
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT64: "uint64",
    descriptor_pb2.FieldDescriptorProto.TYPE_INT32: "int32",
    descriptor_pb2.FieldDescriptorProto.TYPE_FIXED64: "fixed64",
    descriptor_pb2.FieldDescriptorProto.TYPE_FIXED32: "fixed32",
    descriptor_pb2.FieldDescriptorProto.TYPE_BOOL: "bool",
    descriptor_pb2.FieldDescriptorProto.TYPE_STRING: "string",
    descriptor_pb2.FieldDescriptorProto.TYPE_BYTES: "bytes",
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT32: "uint32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SFIXED32: "sfixed32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SFIXED64: "sfixed64",
    descriptor_pb2.FieldDescriptorProto.TYPE_SINT32: "sint32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SINT64: "sint64",
}


@dataclass
class Undocumented:
    """Something of the API without a comment (an RPC, a field, a message...)."""

    what: str


def descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    """Every proto of ``protos/``, with its comments."""
    files = [str(path.relative_to(PROTO_ROOT)) for path in proto_files()]
    include = str(Path(protoc.__file__).parent / "_proto")
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "api.pb"
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{PROTO_ROOT}",
                f"-I{include}",
                f"--descriptor_set_out={out}",
                "--include_source_info",
                *files,
            ]
        )
        if code != 0:
            raise RuntimeError(f"protoc failed with exit code {code}")
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


class _Comments:
    def __init__(self, file: descriptor_pb2.FileDescriptorProto) -> None:
        self._by_path: dict[tuple[int, ...], str] = {}
        for location in file.source_code_info.location:
            parts = [location.leading_comments.strip(), location.trailing_comments.strip()]
            text = " ".join(" ".join(p.split()) for p in parts if p)
            if text:
                self._by_path[tuple(location.path)] = text

    def get(self, path: Sequence[int]) -> str:
        return self._by_path.get(tuple(path), "")


def _short(type_name: str, package: str) -> str:
    name = type_name.lstrip(".")
    prefix = package + "."
    return name[len(prefix) :] if name.startswith(prefix) else name


def _anchor(name: str) -> str:
    return name.lower().replace(".", "")


def _field_type(field: descriptor_pb2.FieldDescriptorProto, package: str) -> str:
    if field.type_name:
        name = _short(field.type_name, package)
        kind = f"[{name}](#{_anchor(name)})"
    else:
        kind = _SCALARS.get(field.type, "?")
    if field.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED:
        return f"repeated {kind}"
    if field.proto3_optional:
        return f"optional {kind}"
    return kind


def _cell(text: str) -> str:
    return text.replace("|", "\\|") or "—"


def _callers(method: str) -> str:
    access = access_for(method)
    who = []
    if access.actors:
        who.append("actors, operator")
    elif access.operator:
        who.append("operator")
    who.extend(f"`{part}`" for part in sorted(access.parts))
    return ", ".join(who) or "nobody"


def _render_enum(
    lines: list[str],
    enum: descriptor_pb2.EnumDescriptorProto,
    name: str,
    path: list[int],
    comments: _Comments,
    missing: list[Undocumented],
) -> None:
    lines += [f"### {name}", ""]
    text = comments.get(path)
    if text:
        lines += [text, ""]
    lines += ["| value | number | meaning |", "|---|---|---|"]
    for index, value in enumerate(enum.value):
        comment = comments.get([*path, _ENUM_VALUE, index])
        lines.append(f"| `{value.name}` | {value.number} | {_cell(comment)} |")
    lines.append("")


def _render_message(
    lines: list[str],
    message: descriptor_pb2.DescriptorProto,
    name: str,
    path: list[int],
    package: str,
    comments: _Comments,
    missing: list[Undocumented],
) -> None:
    lines += [f"### {name}", ""]
    text = comments.get(path)
    if text:
        lines += [text, ""]
    if message.field:
        lines += ["| field | type | description |", "|---|---|---|"]
        for index, field in enumerate(message.field):
            comment = comments.get([*path, _MESSAGE_FIELD, index])
            if not comment:
                missing.append(Undocumented(f"field {package}.{name}.{field.name}"))
            kind = _field_type(field, package)
            lines.append(f"| `{field.name}` | {kind} | {_cell(comment)} |")
    else:
        lines.append("No fields.")
    lines.append("")
    for index, nested in enumerate(message.nested_type):
        if nested.options.map_entry:
            continue
        _render_message(
            lines,
            nested,
            f"{name}.{nested.name}",
            [*path, _MESSAGE_NESTED, index],
            package,
            comments,
            missing,
        )
    for index, enum in enumerate(message.enum_type):
        _render_enum(
            lines, enum, f"{name}.{enum.name}", [*path, _MESSAGE_ENUM, index], comments, missing
        )


def render(files: Iterable[descriptor_pb2.FileDescriptorProto]) -> tuple[str, list[Undocumented]]:
    """The page, and what lacks a comment."""
    missing: list[Undocumented] = []
    lines = [
        "# mxfed gRPC API reference",
        "",
        "Generated by `python -m mxfed.apidoc` from the comments in `protos/`; a test",
        "fails when this page is stale. Every part also serves gRPC server reflection",
        '(README: "Generic gRPC tools"). *Callers* is who the internal plane admits',
        "(`mxfed/internal_access.py`): local actors (bots and bridges, with a",
        "certificate from `mxfed actors add`), the operator (the `mxfed` CLI), or",
        "named parts of mxfed. Errors come back as gRPC statuses whose details read",
        "`M_ERRCODE: message` (`mxfed.client` raises them as `MatrixError`).",
        "",
    ]
    for file in sorted(files, key=lambda f: f.name):
        package = file.package
        comments = _Comments(file)
        lines += [f"## {package} (`protos/{file.name}`)", ""]
        for s_index, service in enumerate(file.service):
            path = [_FILE_SERVICE, s_index]
            lines += [f"### service {service.name}", ""]
            text = comments.get(path)
            if text:
                lines += [text, ""]
            lines += ["| RPC | request → response | callers | description |", "|---|---|---|---|"]
            for m_index, method in enumerate(service.method):
                comment = comments.get([*path, _SERVICE_METHOD, m_index])
                full = f"/{package}.{service.name}/{method.name}"
                if not comment:
                    missing.append(Undocumented(f"rpc {full}"))
                request = _short(method.input_type, package)
                response = _short(method.output_type, package)
                if method.client_streaming:
                    request = f"stream {request}"
                if method.server_streaming:
                    response = f"stream {response}"
                lines.append(
                    f"| `{method.name}` | [{request}](#{_anchor(request.split()[-1])}) → "
                    f"[{response}](#{_anchor(response.split()[-1])}) | {_callers(full)} "
                    f"| {_cell(comment)} |"
                )
            lines.append("")
        for index, enum in enumerate(file.enum_type):
            _render_enum(lines, enum, enum.name, [_FILE_ENUM, index], comments, missing)
        for index, message in enumerate(file.message_type):
            _render_message(
                lines, message, message.name, [_FILE_MESSAGE, index], package, comments, missing
            )
    return "\n".join(lines).rstrip() + "\n", missing


def generate() -> tuple[str, list[Undocumented]]:
    return render(descriptor_set().file)


def main() -> int:
    page, missing = generate()
    API_PAGE.parent.mkdir(parents=True, exist_ok=True)
    API_PAGE.write_text(page)
    print(f"wrote {API_PAGE.relative_to(REPO_ROOT)}; {len(missing)} without a comment")
    for item in missing:
        print(f"  {item.what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
