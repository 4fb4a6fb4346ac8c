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

from bundler.errors import ManifestError
from bundler.names import BUNDLE_NAME_RE, ELSER_IDS, check_served_name
from bundler.oci.ref import check_image_ref

NAME_RE = BUNDLE_NAME_RE.pattern
PLATFORM_RE = r"^[a-z0-9]+/[a-z0-9_]+(?:/[a-z0-9]+)?$"
Product = Literal["elasticsearch", "kibana", "observability", "security"]
PRODUCTS: tuple[Product, ...] = ("elasticsearch", "kibana", "observability", "security")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


class ProductDocs(_Strict):
    version: Annotated[str, Field(pattern=r"^[0-9]+\.[0-9]+$")]
    products: list[Product] = Field(default_factory=lambda: list(PRODUCTS), min_length=1)


class Elastic(_Strict):
    """Elastic artifacts: ELSER models and AI Assistant product docs."""

    elser: list[Literal[ELSER_IDS]] = Field(default_factory=list)  # type: ignore[valid-type]
    product_docs: ProductDocs | None = None
    source_dir: str | None = None
    # Where to download from (mirrors); defaults are Elastic's public repositories.
    elser_url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    product_docs_url: Annotated[str, Field(pattern=r"^https?://")] | None = None


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


def load_manifest(path: Path) -> Manifest:
    """Read and validate a manifest file.

    Raises:
        ManifestError: unreadable file, invalid YAML, or invalid content.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"cannot read manifest: {e}", path=str(path)) from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ManifestError(f"invalid YAML: {e}", path=str(path)) from e
    return parse_manifest(data, source=str(path), base_dir=path.resolve().parent)


def json_schema() -> dict[str, Any]:
    """The manifest's JSON Schema (for editors and CI linting)."""
    schema = Manifest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "airgap manifest (apiVersion airgap/v1)"
    return schema
