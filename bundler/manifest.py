"""The manifest: everything a user decides on the connected side (YAML, ``airgap/v1``).

Install-time facts (host names, Kibana URL, credentials) are deliberately absent:
they are ``airgap install`` options. Unknown keys are rejected with their path
(``serve.max_model_len: …``) so that a typo never silently changes what runs.
Relative paths are resolved against the manifest's own directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from bundler import safejson
from bundler.errors import ManifestError
from bundler.names import (
    BUNDLE_NAME_RE,
    E5_IDS,
    ELSER_IDS,
    INFERENCE_SUFFIX_RE,
    check_served_name,
    doc_suffix,
)
from bundler.oci.ref import check_image_ref

NAME_RE = BUNDLE_NAME_RE.pattern
PLATFORM_RE = r"^[a-z0-9]+/[a-z0-9_]+(?:/[a-z0-9]+)?$"
Product = Literal["elasticsearch", "kibana", "observability", "security"]
PRODUCTS: tuple[Product, ...] = ("elasticsearch", "kibana", "observability", "security")
# A manifest is a page of YAML: these limits are far above any real one and keep a
# crafted file from exhausting the parser (PyYAML composes nodes recursively).
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_YAML_DEPTH = 64
_MAX_INT_CHARS = 24  # 20 digits, a sign and some '_' separators


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class ModelSource(_Strict):
    """Model weights: from a Hugging Face repo (``repo``) or a local directory (``path``)."""

    repo: Annotated[str, Field(pattern=r"^[\w.-]+/[\w.-]+$")] | None = None
    revision: str = "main"
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    path: str | None = None
    served_name: str
    # The builder's statement that they accepted the model's licence (its id, as `build`
    # prints it): needed for a gated model, or a licence that is not OSI-approved,
    # unknown, `other` or missing.
    license_accepted: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        default=None,
        description="The model's licence id (as `airgap build` prints it) that the person "
        "building the bundle accepted; required for a gated model or a licence that is not "
        "OSI-approved, unknown, `other` or missing.",
    )

    @field_validator("served_name")
    @classmethod
    def _served_name(cls, v: str) -> str:
        return check_served_name(v)

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        if (self.repo is None) == (self.path is None):
            raise ValueError("give exactly one of `repo` (Hugging Face) or `path` (local weights)")
        if self.path is not None and (self.include or self.exclude or self.revision != "main"):
            raise ValueError("`revision`, `include` and `exclude` apply only to `repo`")
        return self


class ImageArchive(_Strict):
    """A saved image: docker-archive tar, OCI layout directory or OCI archive tar."""

    archive: str


ImageSource = str | ImageArchive


class Images(_Strict):
    vllm: ImageSource
    nginx: ImageSource

    @field_validator("vllm", "nginx")
    @classmethod
    def _ref(cls, v: ImageSource) -> ImageSource:
        return check_image_ref(v) if isinstance(v, str) else v

    def items(self) -> list[tuple[str, ImageSource]]:
        return [("nginx", self.nginx), ("vllm", self.vllm)]


InferenceId = Annotated[str, Field(pattern="^" + INFERENCE_SUFFIX_RE + "$")]
SECURITY_LABS_VERSION = r"^[0-9]{4}\.[0-9]{2}\.[0-9]{2}(-[0-9]{6})?$"


class ProductDocs(_Strict):
    """Kibana's knowledge-base artifacts, all from one repository (``product_docs_url``).

    Every key added after the first release is optional and defaults to None, so a
    manifest without it signs exactly as before.
    """

    version: Annotated[str, Field(pattern=r"^[0-9]+\.[0-9]+$")]
    products: list[Product] = Field(default_factory=lambda: list(PRODUCTS), min_length=1)
    inference_ids: Annotated[list[InferenceId], Field(min_length=1)] | None = Field(
        default=None,
        description="Embedding endpoints the artifacts are built for: an ELSER one (an id "
        "naming ELSER) means the plain names, another (.multilingual-e5-small-elasticsearch) "
        "the names ending in --<id>. Default: ELSER only.",
    )
    openapi: bool | None = Field(
        default=None,
        description="Also kb-product-doc-openapi-<version>.zip (the Elasticsearch and Kibana "
        "API specs; Kibana 9.5+).",
    )
    security_labs: Annotated[str, Field(pattern=SECURITY_LABS_VERSION)] | None = Field(
        default=None,
        description="Also security-labs-<this>.zip (Elastic Security Labs content), a date "
        "such as 2026.08.15.",
    )

    def artifact_names(self) -> list[str]:
        """Every file name these keys ask for, as Kibana names them."""
        names = []
        ids: list[str | None] = [*self.inference_ids] if self.inference_ids else [None]
        products: list[str] = [*self.products, *(["openapi"] if self.openapi else [])]
        for ident in ids:
            suffix = doc_suffix(ident)
            names += [f"kb-product-doc-{p}-{self.version}{suffix}.zip" for p in products]
            if self.security_labs:
                names.append(f"security-labs-{self.security_labs}{suffix}.zip")
        return sorted(set(names))


class Elastic(_Strict):
    """Elastic artifacts: ELSER models and AI Assistant product docs."""

    elser: list[Literal[ELSER_IDS]] = Field(default_factory=list)  # type: ignore[valid-type]
    e5: list[Literal[E5_IDS]] | None = Field(  # type: ignore[valid-type]
        default=None,
        description="The E5 model of Elasticsearch's .multilingual-e5-small-elasticsearch "
        "endpoint, from the same model repository as ELSER (elser_url), carried beside it.",
    )
    product_docs: ProductDocs | None = None
    source_dir: str | None = None
    # Where to download from (mirrors); defaults are Elastic's public repositories.
    elser_url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    product_docs_url: Annotated[str, Field(pattern=r"^https?://")] | None = None

    def model_ids(self) -> list[str]:
        """The model repository's ids to carry: ``elser`` then ``e5``, each once."""
        return list(dict.fromkeys([*self.elser, *(self.e5 or [])]))


class Serve(_Strict):
    """vLLM's command line on the air-gapped host."""

    max_model_len: Annotated[int, Field(ge=16)] | None = None
    tensor_parallel_size: Annotated[int, Field(ge=1, le=64)] = 1
    pipeline_parallel_size: Annotated[int, Field(ge=1, le=64)] = 1
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] | None = None
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] | None = None
    enable_auto_tool_choice: bool = False
    tool_call_parser: Annotated[str, Field(pattern=r"^[a-z0-9_]+$")] | None = None
    tokenizer_mode: Literal["auto", "slow", "mistral", "custom"] | None = None
    config_format: Literal["auto", "hf", "mistral"] | None = None
    load_format: Annotated[str, Field(pattern=r"^[a-z0-9_]+$")] | None = None
    chat_template: str | None = None
    extra_args: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _tools(self) -> Serve:
        if self.enable_auto_tool_choice and not self.tool_call_parser:
            raise ValueError("enable_auto_tool_choice needs tool_call_parser (vLLM refuses it)")
        return self


class Connector(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    native_function_calling: bool | None = None


class Manifest(_Strict):
    """The declarative input of ``airgap build``."""

    apiVersion: Literal["airgap/v1"]
    kind: Literal["Bundle"]
    name: Annotated[str, Field(pattern=NAME_RE)]
    version: Annotated[int, Field(ge=1)]
    description: str | None = None
    expires_days: Annotated[int, Field(ge=1, le=3650)] = 180
    platform: Annotated[str, Field(pattern=PLATFORM_RE)] = "linux/amd64"
    model: ModelSource
    images: Images
    elastic: Elastic | None = None
    serve: Serve = Field(default_factory=Serve)
    connector: Connector | None = None

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _source: str = PrivateAttr(default="<manifest>")

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    @property
    def source(self) -> str:
        return self._source

    def resolve(self, path: str) -> Path:
        """A path from the manifest, relative to the manifest's directory."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self._base_dir / p)

    def to_signed_dict(self) -> dict[str, Any]:
        """The manifest as it goes into the signed index (paths as written, not resolved).

        Paths stay relative so that the index never carries the build machine's
        directories and two builds in different directories stay byte-identical.
        """
        return self.model_dump(mode="json", exclude_none=True)


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "ImageArchive", "function-after[_ref(), str]"):
            continue  # union branch names are noise for the user
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def parse_manifest(
    data: Any, *, source: str = "<manifest>", base_dir: Path | None = None
) -> Manifest:
    """Validate an already-loaded manifest document.

    Raises:
        ManifestError: naming every invalid key by its path.
    """
    if not isinstance(data, dict):
        raise ManifestError("the manifest must be a YAML mapping", path=source)
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as e:
        lines = []
        seen = set()
        for err in e.errors():
            loc = _format_loc(tuple(err["loc"]))
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key (not allowed here)"
            elif msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            line = f"{loc}: {msg}"
            if line not in seen:
                seen.add(line)
                lines.append(line)
        raise ManifestError(
            "; ".join(lines),
            path=source,
            hint="Fix the key(s) named above; `airgap schema` prints every allowed key.",
        ) from e
    manifest._base_dir = base_dir or Path.cwd()
    manifest._source = source
    return manifest


class _ManifestLoader(yaml.SafeLoader):
    """PyYAML's safe loader, with a nesting limit and bounded integers."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        # Checked before the composer recurses into the node, so no input reaches
        # Python's recursion limit.
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nested deeper than {MAX_YAML_DEPTH} levels (the limit)",
                    self.peek_event().start_mark,  # type: ignore[no-untyped-call]
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _bounded_int(loader: _ManifestLoader, node: yaml.ScalarNode) -> int:
    if len(str(node.value)) > _MAX_INT_CHARS:
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"integer of {len(str(node.value))} characters (the limit is 20 digits)",
            node.start_mark,
        )
    return yaml.SafeLoader.construct_yaml_int(loader, node)


_ManifestLoader.add_constructor("tag:yaml.org,2002:int", _bounded_int)


def _yaml_problem(e: yaml.YAMLError) -> str:
    """PyYAML's error as one line: where, then what (without its excerpt of the file)."""
    if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
        mark = e.problem_mark
        what = " ".join(p for p in (e.context, e.problem) if p)
        return f"line {mark.line + 1}, column {mark.column + 1}: {what}"
    return " ".join(str(e).split())


def load_yaml(data: bytes, source: str) -> Any:
    """Parse a manifest's bytes with the limits above.

    Raises:
        ManifestError: not UTF-8, not YAML, beyond a limit, or holding a lone surrogate.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ManifestError(f"not UTF-8 text (byte {e.start})", path=source) from e
    try:
        doc = yaml.load(text, Loader=_ManifestLoader)  # a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ManifestError(
            f"invalid YAML: {_yaml_problem(e)}",
            path=source,
            hint="Fix the YAML at the line and column named above.",
        ) from e
    where = safejson.lone_surrogate_path(doc, "")
    if where is not None:
        raise ManifestError(
            f"{where.lstrip('.') or '(top level)'}: lone surrogate escape (\\ud800-\\udfff) "
            "in a string; it has no UTF-8 form",
            path=source,
            hint="Write the character itself, or a valid surrogate pair.",
        )
    return doc


def load_manifest(path: Path) -> Manifest:
    """Read and validate a manifest file (at most :data:`MAX_MANIFEST_BYTES`).

    Raises:
        ManifestError: unreadable file, too large, invalid YAML, or invalid content.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as e:
        raise ManifestError(f"cannot read manifest: {e.strerror or e}", path=str(path)) from e
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(
            f"larger than {MAX_MANIFEST_BYTES} bytes, the limit for a manifest",
            path=str(path),
            hint="A manifest is a page of YAML; check that this is the right file.",
        )
    doc = load_yaml(data, str(path))
    return parse_manifest(doc, source=str(path), base_dir=path.resolve().parent)


def json_schema() -> dict[str, Any]:
    """The manifest's JSON Schema (for editors and CI linting)."""
    schema = Manifest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "airgap manifest (apiVersion airgap/v1)"
    return schema
