"""The built-in demo's data, made offline: a tiny model, images, Elastic artifacts.

Used by ``scripts/demo`` and the tests. Images are assembled with the standard
library (docker-archive and OCI layouts) so nothing is pulled from a registry.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import yaml

# The demo and test models' card: an OSI-approved licence, so builds need no acceptance.
DEMO_CARD = (
    "---\nlicense: apache-2.0\npipeline_tag: text-generation\nlibrary_name: transformers\n"
    "---\n# tiny\nA tiny model for airgap's demo and tests.\n"
)


# A card as Meta's Llama 3.3 repo has it: its own licence and a gate (abridged).
LLAMA_CARD = """---
language: [en, de]
license: llama3.3
base_model: meta-llama/Llama-3.1-70B
pipeline_tag: text-generation
extra_gated_prompt: "### LLAMA 3.3 COMMUNITY LICENSE AGREEMENT\\nBy clicking ..."
extra_gated_fields:
  First Name: text
---
# Llama 3.3
"""


def set_card(manifest: Path, card: str, accepted: str | None = None) -> None:
    """Give ``make_demo_sources``' model this card (and the manifest ``license_accepted``)."""
    (manifest.parent / "weights" / "README.md").write_text(card)
    if accepted is not None:
        text = manifest.read_text().replace(
            "served_name: tiny", f"served_name: tiny\n  license_accepted: {accepted}"
        )
        manifest.write_text(text)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# A tiny Llama's shape, as a Hugging Face config.json gives it (the build records it).
TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "torch_dtype": "float32",
}


def safetensors_bytes(size: int, fill: bytes = bytes(range(256))) -> bytes:
    """A valid safetensors file of exactly ``size`` bytes: one U8 tensor of ``fill``.

    The stand-in for vLLM never reads it; the build reads its header (model facts).
    """
    header = b""
    for _ in range(3):  # the length's digits change the header's length at most twice
        n = size - 8 - len(header)
        body = json.dumps({"filler": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}})
        header = body.encode().ljust(-(-len(body) // 8) * 8)  # space-padded, as safetensors does
    n = size - 8 - len(header)
    return len(header).to_bytes(8, "little") + header + (fill * (n // len(fill) + 1))[:n]


def tar_bytes(files: dict[str, bytes]) -> bytes:
    """A deterministic tar of ``files`` (an image layer)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1700000000
            info.mode = 0o755
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Image:
    """An image made of layers (uncompressed tars), optionally gzip-compressed blobs."""

    def __init__(
        self,
        layers: list[dict[str, bytes]],
        *,
        arch: str = "amd64",
        compress: bool = False,
        cmd: list[str] | None = None,
        env: list[str] | None = None,
    ) -> None:
        self.diff_tars = [tar_bytes(files) for files in layers]
        self.blobs = [gzip.compress(t, mtime=0) if compress else t for t in self.diff_tars]
        self.media_types = [
            "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if compress else "")
            for _ in self.blobs
        ]
        self.config = json.dumps(
            {
                "architecture": arch,
                "os": "linux",
                "config": {"Cmd": cmd or ["/bin/sh"], **({"Env": env} if env else {})},
                "rootfs": {
                    "type": "layers",
                    "diff_ids": ["sha256:" + sha(t) for t in self.diff_tars],
                },
            },
            sort_keys=True,
        ).encode()
        self.manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": "sha256:" + sha(self.config),
                    "size": len(self.config),
                },
                "layers": [
                    {"mediaType": mt, "digest": "sha256:" + sha(b), "size": len(b)}
                    for mt, b in zip(self.media_types, self.blobs, strict=True)
                ],
            },
            sort_keys=True,
        ).encode()

    @property
    def config_digest(self) -> str:
        return "sha256:" + sha(self.config)

    def docker_archive(self, path: Path, tag: str) -> Path:
        """``docker save`` layout (pre-25): <id>/layer.tar, <config>.json, manifest.json."""
        files: dict[str, bytes] = {}
        names = []
        for blob in self.blobs:
            name = f"{sha(blob)}/layer.tar"
            files[name] = blob
            names.append(name)
        cfg = f"{sha(self.config)}.json"
        files[cfg] = self.config
        files["manifest.json"] = json.dumps(
            [{"Config": cfg, "RepoTags": [tag], "Layers": names}]
        ).encode()
        path.write_bytes(tar_bytes(files))
        return path

    def oci_files(self, ref: str | None = None) -> dict[str, bytes]:
        files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}'}
        for blob in [*self.blobs, self.config, self.manifest]:
            files[f"blobs/sha256/{sha(blob)}"] = blob
        desc = {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": "sha256:" + sha(self.manifest),
            "size": len(self.manifest),
        }
        if ref:
            desc["annotations"] = {"org.opencontainers.image.ref.name": ref}
        files["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [desc]}).encode()
        return files

    def oci_archive(self, path: Path, ref: str | None = None) -> Path:
        path.write_bytes(tar_bytes(self.oci_files(ref)))
        return path

    def oci_dir(self, path: Path, ref: str | None = None) -> Path:
        for name, data in self.oci_files(ref).items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(data)
        return path


def make_demo_sources(
    root: Path,
    *,
    model_bytes: int = 300_000,
    big: int = 0,
    real_images: bool = False,
    elser_bytes: int = 10_000,
) -> Path:
    """A complete local-source manifest under ``root``; returns the manifest path.

    ``real_images``: runnable images (Nginx from this machine's binary, and the
    OpenAI-compatible stand-in for vLLM) instead of tiny inert ones.
    """
    weights = root / "weights"
    (weights / "tokenizer").mkdir(parents=True)
    (weights / "config.json").write_text(json.dumps(TINY_CONFIG) + "\n")
    (weights / "tokenizer" / "tokenizer.json").write_text('{"version": "1.0"}\n')
    (weights / "model.safetensors").write_bytes(safetensors_bytes(model_bytes // 256 * 256))
    (weights / "empty.txt").write_bytes(b"")
    (weights / "README.md").write_text(DEMO_CARD)
    if big:
        with open(weights / "model-big.safetensors", "wb") as f:
            block = hashlib.sha256(b"seed").digest() * (1 << 15)  # 1 MiB
            for _ in range(big // len(block)):
                f.write(block)
    if real_images:
        nginx_image(root / "nginx.tar")
        openai_stub_image(root / "vllm.tar")
    else:
        shared = {"bin/busybox": b"\x7fELF-not-really" * 100}
        Image([shared, {"etc/nginx/nginx.conf": b"events {}\n"}]).docker_archive(
            root / "nginx.tar", "example.org/nginx:test"
        )
        Image([shared, {"app/server.py": b"print('hi')\n"}], compress=True).oci_archive(
            root / "vllm.tar", "example.org/vllm:test"
        )
    elastic = root / "elastic"
    elastic.mkdir()
    pt = (hashlib.sha256(b"elser").digest() * (elser_bytes // 32 + 1))[:elser_bytes]
    (elastic / "elser_model_2_linux-x86_64.pt").write_bytes(pt)
    (elastic / "elser_model_2_linux-x86_64.vocab.json").write_text('{"vocabulary": ["a"]}')
    (elastic / "elser_model_2_linux-x86_64.metadata.json").write_text(
        json.dumps(
            {
                "packaged_model_id": "elser_model_2_linux-x86_64",
                "sha256": sha(pt),
                "size": len(pt),
                "vocabulary_file": "elser_model_2_linux-x86_64.vocab.json",
            }
        )
    )
    (elastic / "kb-product-doc-kibana-9.2.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    manifest = {
        "apiVersion": "airgap/v1",
        "kind": "Bundle",
        "name": "demo",
        "version": 1,
        "model": {"path": "./weights", "served_name": "tiny"},
        "images": {"vllm": {"archive": "./vllm.tar"}, "nginx": {"archive": "./nginx.tar"}},
        "elastic": {"source_dir": "./elastic"},
        "serve": {"max_model_len": 256, "gpu_memory_utilization": 0.9},
        "connector": {"name": "Tiny (air-gapped)"},
    }
    path = root / "manifest.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


# -- real images assembled offline from this machine's programs --------------------------


def _ldd(binary: Path) -> list[Path]:
    import re as _re
    import subprocess

    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False).stdout
    libs = []
    for line in out.splitlines():
        m = _re.search(r"(/\S+)\s+\(0x", line)
        if m:
            libs.append(Path(m.group(1)))
    return libs


def assemble_image(
    out: Path,
    tag: str,
    files: dict[str, Path | bytes],
    config: dict[str, object],
    dirs: dict[str, int] | None = None,
) -> Path:
    """A one-layer docker-archive at ``out`` (streamed to disk, never built in memory)."""
    layer = out.with_name(out.name + ".layer")
    with tarfile.open(layer, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, mode in sorted((dirs or {}).items()):
            info = tarfile.TarInfo(name.lstrip("/"))
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, 1700000000
            tf.addfile(info)
        for name, src in sorted(files.items()):
            arc = name.lstrip("/")
            if isinstance(src, bytes):
                info = tarfile.TarInfo(arc)
                info.size, info.mode, info.mtime = len(src), 0o755, 1700000000
                tf.addfile(info, io.BytesIO(src))
            else:
                info = tf.gettarinfo(str(src.resolve()), arcname=arc)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with open(src.resolve(), "rb") as f:
                    tf.addfile(info, f)
    h = hashlib.sha256()
    with open(layer, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    diff_id = "sha256:" + h.hexdigest()
    cfg = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        },
        sort_keys=True,
    ).encode()
    cfg_name = f"{sha(cfg)}.json"
    manifest = json.dumps(
        [{"Config": cfg_name, "RepoTags": [tag], "Layers": ["layer.tar"]}]
    ).encode()
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in (("manifest.json", manifest), (cfg_name, cfg)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        tf.add(str(layer), arcname="layer.tar")
    layer.unlink()
    return out


_BASE_ETC = {
    "/etc/passwd": b"root:x:0:0:root:/root:/bin/sh\nnginx:x:101:101:nginx:/nonexistent:/bin/false\n"
    b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    "/etc/group": b"root:x:0:\nnginx:x:101:\nnogroup:x:65534:\n",
    "/etc/nsswitch.conf": b"passwd: files\ngroup: files\nhosts: files dns\n",
    "/etc/hosts": b"127.0.0.1 localhost\n",
}


def _dpkg_owners(paths: list[str]) -> set[tuple[str, str | None]]:
    """(package, arch) that own ``paths`` on this machine, by one ``dpkg -S`` (merged /usr:
    a file may be registered under /lib or /usr/lib)."""
    import subprocess

    candidates = sorted({c for p in paths for c in (p, "/usr" + p, p.removeprefix("/usr"))})
    r = subprocess.run(["dpkg", "-S", *candidates], capture_output=True, text=True)
    owners: set[tuple[str, str | None]] = set()
    for line in r.stdout.splitlines():
        for pkg in line.split(": ", 1)[0].split(", "):
            name, _, arch = pkg.partition(":")
            owners.add((name, arch or None))
    return owners


def dpkg_status_for(paths: list[str]) -> bytes:
    """This machine's real dpkg ``status`` entries for the packages that own ``paths``."""
    owners = _dpkg_owners(paths)
    stanzas = Path("/var/lib/dpkg/status").read_text().split("\n\n")
    keep = []
    for st in stanzas:
        fields = dict(
            line.split(": ", 1) for line in st.splitlines() if ": " in line and line[0] != " "
        )
        name, arch = fields.get("Package"), fields.get("Architecture")
        if (name, arch) in owners or (name, None) in owners:
            keep.append(st.strip("\n"))
    return ("\n\n".join(keep) + "\n").encode()


def nginx_image(out: Path, tag: str = "airgap-demo/nginx:1") -> Path:
    """A real Nginx image from Debian's nginx binary and the libraries it links, with the
    real dpkg ``status`` entries of the packages those files come from and os-release."""
    binary = Path("/usr/sbin/nginx")
    files: dict[str, Path | bytes] = {"/usr/sbin/nginx": binary, **_BASE_ETC}
    for lib in _ldd(binary):
        files[str(lib)] = lib
    files["/etc/nginx/mime.types"] = Path("/etc/nginx/mime.types")
    files["/etc/os-release"] = Path("/etc/os-release")
    files["/var/lib/dpkg/status"] = dpkg_status_for(sorted(files))
    dirs = {
        "/tmp": 0o1777,
        "/run": 0o755,
        "/var/log/nginx": 0o755,
        "/var/lib/nginx": 0o755,
        "/var/cache/nginx": 0o755,
        "/etc/nginx/conf.d": 0o755,
    }
    return assemble_image(
        out,
        tag,
        files,
        {
            "Entrypoint": ["/usr/sbin/nginx"],
            "Cmd": ["-g", "daemon off;"],
            "ExposedPorts": {"443/tcp": {}},
        },
        dirs,
    )


def openai_stub_image(out: Path, tag: str = "airgap-demo/openai-stub:1") -> Path:
    """An image whose entrypoint takes vLLM's flags and serves an OpenAI-compatible API.

    Debian's Python interpreter and standard library plus devkit/vllm_stub.py: the
    installer starts it exactly as it starts vllm/vllm-openai.
    """
    python = Path("/usr/bin/python3.11")
    stdlib = Path("/usr/lib/python3.11")
    skip = {
        "test",
        "idlelib",
        "tkinter",
        "turtledemo",
        "ensurepip",
        "lib2to3",
        "pydoc_data",
        "__pycache__",
        "site-packages",
        "dist-packages",
        "unittest",
        "distutils",
    }
    # python3 too, as vllm/vllm-openai has it: the Kubernetes modelcar's init container
    # copies the model with it
    files: dict[str, Path | bytes] = {
        "/usr/bin/python3.11": python,
        "/usr/bin/python3": python,
        **_BASE_ETC,
    }
    libs = set(_ldd(python))
    for path in stdlib.rglob("*"):
        rel = path.relative_to(stdlib)
        if any(part in skip or part.startswith("config-") for part in rel.parts):
            continue
        if path.is_file():
            files[f"/usr/lib/python3.11/{rel.as_posix()}"] = path
            if path.suffix == ".so":
                libs.update(_ldd(path))
    for lib in libs:
        files[str(lib)] = lib
    files["/app/server.py"] = (Path(__file__).parent / "vllm_stub.py").read_bytes()
    files["/etc/os-release"] = Path("/etc/os-release")
    owned = [str(python), *map(str, libs), f"{stdlib}/os.py", f"{stdlib}/json/__init__.py"]
    files["/var/lib/dpkg/status"] = dpkg_status_for(owned)
    return assemble_image(
        out,
        tag,
        files,
        {
            "Entrypoint": ["/usr/bin/python3.11", "/app/server.py"],
            "Env": ["PYTHONDONTWRITEBYTECODE=1", "PATH=/usr/bin"],
            "ExposedPorts": {"8000/tcp": {}},
        },
        {"/tmp": 0o1777},
    )
