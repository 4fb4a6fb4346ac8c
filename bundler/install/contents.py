"""The signed index's names, checked again before install acts on any of them.

The reader proves the index is canonical, signed and that no member escapes the
staging directory. That is not enough for install, which turns names into host
paths, bind mounts, container names, tags and Elasticsearch API paths: a trusted key
can still sign ``served_name: x/../../secrets``. This check runs in the preflight,
before a byte of payload is read or anything is created.
"""

from __future__ import annotations

from bundler.bundle.index import BLOB_PREFIX, INDEX_MEMBER, Index
from bundler.errors import AirgapError, BundleError, UsageError
from bundler.manifest import Manifest, parse_manifest
from bundler.names import DOC_FILE_RE, ELSER_FILE_RE, IMAGE_ROLES, TAG_NAMESPACE
from bundler.oci.ref import check_image_ref
from bundler.sbom.model import SBOM_PATH
from bundler.toolbundle import EMBEDDED_RE, is_tool_bundle, tool_version

_HINT = (
    "The bundle is signed by a key you trust, but its builder wrote names install "
    "refuses to act on. Do not install it; ask the builder to rebuild with a released airgap."
)


def check_signed_names(index: Index, *, bundle: str | None = None) -> Manifest:
    """The signed manifest, re-validated, with every name install derives from.

    Raises:
        UsageError: a tool bundle, which ``install.sh`` or ``self-update`` installs.
        BundleError: a name in the signed index breaks its grammar (exit 3: a hostile
            bundle, even though its signature is good).
    """
    if is_tool_bundle(index):
        raise UsageError(
            f"{bundle or 'this bundle'} is a tool bundle (airgap {tool_version(index)}), "
            "not a release",
            hint="Install it with `sh tool/install.sh` from the extracted tool bundle, or "
            "update an installed airgap with `airgap self-update`.",
        )

    def refuse(problem: str) -> BundleError:
        return BundleError(
            f"signed index: {problem}", bundle=bundle, member=INDEX_MEMBER, hint=_HINT
        )

    try:
        m = parse_manifest(index.manifest, source="signed manifest")
    except AirgapError as e:
        raise refuse(e.message) from e
    if m.name != index.name or m.version != index.version:
        raise refuse(
            f"the manifest names {m.name} v{m.version}, the index {index.name} v{index.version}"
        )
    roles = [img.role for img in index.images]
    if sorted(roles) != sorted(IMAGE_ROLES):
        # The signed manifest names both images (its schema requires them), so a build
        # carries both; serving needs both.
        raise refuse(
            f"image roles {roles}: the index must carry each of {', '.join(IMAGE_ROLES)} "
            "exactly once, as its manifest names them"
        )
    for img in index.images:
        for ref in (img.ref, *img.tags):
            try:
                check_image_ref(ref)
            except ValueError as e:
                raise refuse(f"image {img.role}: {e}") from e
            if ref.startswith(TAG_NAMESPACE + "/"):  # install's own names, never the signer's
                raise refuse(f"image {img.role}: {ref!r} is in airgap's tag namespace")
    model_root = f"models/{m.model.served_name}/"
    for f in index.files:
        if f.path.startswith(BLOB_PREFIX):
            continue
        top, _, rest = f.path.partition("/")
        if top == "sbom" and f.path != SBOM_PATH:
            raise refuse(f"{f.path}: the only file under sbom/ is {SBOM_PATH}")
        if top == "tool" and not EMBEDDED_RE.match(f.path):
            raise refuse(f"{f.path}: only tool/airgap-tool-X.Y.Z.tar may live under tool/")
        if top == "models" and not f.path.startswith(model_root):
            raise refuse(f"{f.path}: model files must live under {model_root}")
        if top == "elastic":
            kind, _, name = rest.partition("/")
            pattern = {"elser": ELSER_FILE_RE, "product-docs": DOC_FILE_RE}.get(kind)
            if pattern is None or not pattern.match(name):
                raise refuse(f"{f.path}: not an ELSER or product-doc file name")
    return m
