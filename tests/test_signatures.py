"""Signed versions: real OpenSSF model signatures (``model-signing``) made with keys and a CA made in
the test, pushed with the real CLI to a real registry over HTTP, verified there, required by alias
rules, and verified again by the pod runtime (``modelyard pull``) before anything is served."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from modelyard.registry.client import RegistryClient
from modelyard.registry.db import models as db
from modelyard.registry.kernel import defaults, schemas
from modelyard.registry.kernel.errors import Conflict, Invalid
from modelyard.registry.settings import RegistrySettings
from modelyard.registry.signing.bundles import TrustRoot
from modelyard.registry.signing.sign import SigningKey, hidden_paths, sign
from modelyard.registry.store import RegistryStore
from tests.helpers import content_digest
from tests.support.servers import ThreadedRegistry
from tests.support.signing import KeyPair, make_certificate_signer, make_key_pair
from tests.test_deployments_and_aliases import Registry


@pytest.fixture
def registry(db_url: str, tmp_path: Path) -> Iterator[Registry]:
    """On each database backend (the trust join, the bundle column, the row locks)."""
    settings = RegistrySettings(db_url=db_url, artifacts_url=str(tmp_path / "a"), migrate_on_start=True)
    with ThreadedRegistry(settings) as server:
        yield Registry(server)


@pytest.fixture(scope="module")
def model_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny language model directory, with a hidden folder the archive (and so the signature) leaves out."""
    from tests.support.tiny_lm import make_tiny_lm

    root = make_tiny_lm(tmp_path_factory.mktemp("lm") / "tiny")
    (root / ".cache").mkdir()
    (root / ".cache" / "notes").write_text("not pushed")
    return root


@pytest.fixture
def team_cv(tmp_path: Path) -> KeyPair:
    return make_key_pair(tmp_path / "keys", "team-cv")


def program(path: Path, payload: bytes | None = None) -> Path:
    """The container layout of a torch.export archive around random bytes (the registry never loads it)."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model/archive_format", "pt2")
        archive.writestr("model/data/weights/weight_0", payload if payload is not None else os.urandom(50_000))
    return path


def bento(path: Path) -> Path:
    with tarfile.open(path, "w") as archive:
        data = b"service: 'service:Svc'\n"
        info = tarfile.TarInfo("bento.yaml")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return path


def cli(*args: str, registry: Registry, token: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "MODELYARD_REGISTRY_URL": registry.server.url,
           "MODELYARD_TOKEN": registry.tokens[token]}
    answer = subprocess.run([sys.executable, "-m", "modelyard.cli", *args], capture_output=True, text=True, env=env,
                            timeout=180)
    if ok:
        assert answer.returncode == 0, answer.stderr + answer.stdout
    return answer


def trust(registry: Registry, name: str, keys: KeyPair) -> None:
    cli("registry", "trust", "add", name, "--public-key", str(keys.public), registry=registry, token="admin")


def client(registry: Registry, token: str = "write") -> RegistryClient:
    return RegistryClient(registry.server.url, registry.tokens[token])


@pytest.mark.parametrize("kind", ["torch-export", "bento", "hf"])
def test_push_signs_each_format_and_the_registry_records_the_verified_signer(
        registry: Registry, team_cv: KeyPair, model_directory: Path, tmp_path: Path, kind: str) -> None:
    path = {"torch-export": lambda: program(tmp_path / "m.pt2"), "bento": lambda: bento(tmp_path / "svc.bento"),
            "hf": lambda: model_directory}[kind]()
    trust(registry, "team-cv", team_cv)
    pushed = cli("push", str(path), "--model", "signed", "--sign-key", str(team_cv.private), registry=registry,
                 token="write")
    assert "signed by team-cv with a key, trusted" in pushed.stdout
    with client(registry) as api:
        version = api.get_version("signed", 1)
        assert version.format is not None and version.format.value == kind
        (signature,) = version.signatures
        assert (signature.signer, signature.method, signature.trusted) == ("team-cv", "key", True)
        bundle = api.signature_bundle("signed", 1, "team-cv", digest=signature.bundle_digest)
    payload = json.loads(base64.b64decode(json.loads(bundle)["dsseEnvelope"]["payload"]))
    signed = {item["name"] for item in payload["predicate"]["resources"]}
    if kind == "hf":  # the files the pod extracts, by the same names; the hidden folder is in neither
        assert signed == {p.relative_to(path).as_posix() for p in path.rglob("*")
                          if p.is_file() and ".cache" not in p.parts}
        assert hidden_paths(path) == [".cache"]
    else:
        assert signed == {"."}
    events = registry.call("GET", "/events", "read").json()["events"]
    assert [e["type"] for e in events if e["type"] in ("trust.added", "version.signed")] == [
        "trust.added", "version.signed"]


def test_a_certificate_chain_signs_and_an_identity_pins_the_signer(registry: Registry, tmp_path: Path) -> None:
    ca = make_certificate_signer(tmp_path / "pki", "acme", "ml@acme.example")
    for name, identity in (("team-cv", "ml@acme.example"), ("team-nlp", "nlp@acme.example")):
        cli("registry", "trust", "add", name, "--ca-cert", str(ca.root), "--identity", identity, registry=registry,
            token="admin")
    cli("push", str(program(tmp_path / "m.pt2")), "--model", "signed", "--sign-key", str(ca.key), "--sign-cert",
        str(ca.certificate), "--sign-chain", str(ca.chain), registry=registry, token="write")
    with client(registry) as api:
        (signature,) = api.get_version("signed", 1).signatures  # team-nlp's identity is not the certificate's
    assert (signature.signer, signature.method, signature.identity) == ("team-cv", "certificate", "ml@acme.example")
    other = make_certificate_signer(tmp_path / "other-pki", "other", "ml@acme.example")  # same name, other CA
    refused = cli("push", str(program(tmp_path / "n.pt2")), "--model", "signed", "--sign-key", str(other.key),
                  "--sign-cert", str(other.certificate), "--sign-chain", str(other.chain), registry=registry,
                  token="write", ok=False)
    assert refused.returncode == 1 and "pushed but unsigned" in refused.stderr
    assert "no trusted signer vouches for" in " ".join(refused.stderr.split())


def refused_signature(api: RegistryClient, name: str, version: int, bundle: bytes) -> str:
    with pytest.raises(Invalid) as caught:
        api.upload_signature(name, version, bundle)
    assert api.get_version(name, version).signatures == []  # nothing was recorded
    return str(caught.value)


def test_signatures_that_do_not_prove_the_bytes_are_refused_and_nothing_is_recorded(
        registry: Registry, team_cv: KeyPair, model_directory: Path, tmp_path: Path) -> None:
    trust(registry, "team-cv", team_cv)
    key = SigningKey(team_cv.private)
    weights = os.urandom(50_000)
    pushed = program(tmp_path / "m.pt2", weights)
    tampered = program(tmp_path / "t.pt2", bytes([weights[0] ^ 1]) + weights[1:])
    with client(registry) as api:
        api.create_model("signed")
        for number, path in ((1, pushed), (2, program(tmp_path / "other.pt2"))):
            api.create_version("signed")
            api.upload_artifact("signed", number, path)
        assert "does not match the artifact of signed:1" in refused_signature(api, "signed", 1, sign(tampered, key))
        mallory = SigningKey(make_key_pair(tmp_path / "mallory", "mallory").private)
        assert "no trusted signer vouches for" in refused_signature(api, "signed", 1, sign(pushed, mallory))
        # a valid signature of version 1, uploaded for version 2
        assert "does not match the artifact of signed:2" in refused_signature(api, "signed", 2, sign(pushed, key))
        # a model directory with a file added after it was signed
        grown = tmp_path / "grown"
        shutil.copytree(model_directory, grown)
        bundle = sign(grown, key)
        (grown / "extra.txt").write_text("added later")
        api.create_version("signed")
        api.upload_artifact("signed", 3, grown)
        assert "files the signature does not cover: 'extra.txt'" in refused_signature(api, "signed", 3, bundle)
        (grown / "extra.txt").unlink()
        (grown / "config.json").write_text((grown / "config.json").read_text().replace("64", "65", 1))
        api.create_version("signed")
        api.upload_artifact("signed", 4, grown)
        assert "config.json in the model directory of signed:4 does not match" in refused_signature(
            api, "signed", 4, bundle)
        assert api.upload_signature("signed", 1, sign(pushed, key)).signatures[0].signer == "team-cv"


def test_signed_by_rules_and_a_removed_signer(registry: Registry, team_cv: KeyPair, tmp_path: Path) -> None:
    trust(registry, "team-cv", team_cv)
    key = SigningKey(team_cv.private)
    files = [program(tmp_path / f"m{n}.pt2") for n in (1, 2)]
    with client(registry) as api, client(registry, "admin") as admin:
        api.create_model("digits")
        for number, path in enumerate(files, 1):
            api.create_version("digits")
            api.upload_artifact("digits", number, path)
        admin.protect_alias("digits", "production", schemas.AliasProtection(require=["signed-by:team-cv"]))
        answer = registry.call("PUT", "/models/digits/aliases/production", "write", json={"version": 1})
        assert answer.status_code == 403 and "signed-by:team-cv" in answer.json()["detail"]
        api.sign_version("digits", 1, files[0], key)
        api.sign_version("digits", 2, files[1], key)
        assert api.set_alias("digits", "production", 1).version == 1
        judged = api.alias_history("digits", "production").items[0].judged
        assert judged is not None and set(judged["signatures"]) == {"team-cv"}
        cli("registry", "trust", "rm", "team-cv", registry=registry, token="admin")
        (signature,) = api.get_version("digits", 2).signatures
        assert (signature.signer, signature.trusted) == ("team-cv", False)  # listed, no longer trusted
        answer = registry.call("PUT", "/models/digits/aliases/production", "write", json={"version": 2})
        assert answer.status_code == 403 and "signed-by:team-cv" in answer.json()["detail"]
        # the same name trusted again with another key does not vouch for what the old key signed
        trust(registry, "team-cv", make_key_pair(tmp_path / "new", "team-cv"))
        assert api.get_version("digits", 2).signatures[0].trusted is False
    listed = cli("registry", "trust", "ls", "--json", registry=registry, token="read").stdout
    assert [root["name"] for root in json.loads(listed)] == ["team-cv"]


def test_hostile_signatures_and_trust_material_are_4xx(registry: Registry, team_cv: KeyPair, model_directory: Path,
                                                      tmp_path: Path) -> None:
    from model_signing import manifest
    from model_signing._hashing.hashing import Digest
    from model_signing._signing import sign_ec_key, signing

    trust(registry, "team-cv", team_cv)
    with client(registry) as api:
        api.create_model("m")
        api.create_version("m")
        api.upload_artifact("m", 1, model_directory)
    url = "/models/m/versions/1/signature"

    def put(body: bytes, digest: str | None = None) -> httpx.Response:
        return httpx.put(registry.api + url, content=body, timeout=30,
                         headers={**registry.as_("write"), "Content-Digest": digest or content_digest(body)})

    def signed_manifest(names: list[str]) -> bytes:
        items = [manifest.FileManifestItem(path=pathlib.PurePosixPath(name), digest=Digest("sha256", bytes(32)))
                 for name in names]
        made = manifest.Manifest("m", items, manifest._FileSerialization("sha256"))
        return sign_ec_key.Signer(team_cv.private).sign(signing.Payload(made)).bundle.to_json().encode()

    oversized = b"{" + b" " * defaults.SIGNATURE_MAX_BYTES + b"}"
    assert put(oversized).status_code == 413
    assert put(b"{not json").status_code == 422
    assert put(b'{"mediaType": "x"}').status_code == 422
    assert put(b"[]").status_code == 422
    assert put(b"{}", digest=content_digest(b"other")).status_code == 422  # the declared digest is checked
    escaping = put(signed_manifest(["../../etc/passwd", "config.json"]))  # names are compared, never opened
    assert escaping.status_code == 422 and "'../../etc/passwd'" in escaping.json()["detail"]
    many = signed_manifest([f"f{n}" for n in range(20_000)])  # a valid signature over too many files
    assert len(many) > defaults.SIGNATURE_MAX_BYTES and put(many).status_code == 413
    assert registry.call("GET", "/models/m/versions/1", "read").json()["signatures"] == []
    for body in ({"method": "key", "pem": "not a key"}, {"method": "certificate", "pem": team_cv.public.read_text()},
                 {"method": "key", "pem": team_cv.public.read_text(), "identity": "x@y"},
                 {"method": "rsa", "pem": "x"}, {"method": "key", "pem": "x" * 70_000}):
        assert registry.call("PUT", "/trust/bad", "admin", json=body).status_code == 422, body
    body = {"method": "key", "pem": make_key_pair(tmp_path / "k", "k").public.read_text()}
    assert registry.call("PUT", "/trust/sneaky", "write", json=body).status_code == 403  # admin only
    assert registry.call("PUT", "/trust/team-cv", "admin", json=body).status_code == 409  # remove it first
    assert registry.call("DELETE", "/trust/nobody", "admin").status_code == 404


def pull(registry: Registry, ref: str, to: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "COLUMNS": "200", "MODELYARD_REGISTRY_URL": registry.server.url,
                "MODELYARD_TOKEN": registry.tokens["read"], **env}
    return subprocess.run([sys.executable, "-m", "modelyard.cli", "pull", ref, "--to", str(to)], capture_output=True,
                          text=True, env=full_env, timeout=180)


def test_the_pod_runtime_verifies_before_it_serves(registry: Registry, team_cv: KeyPair, model_directory: Path,
                                                  tmp_path: Path) -> None:
    """What a model pod's init container runs (``modelyard pull REF --to /cache``), with what the chart sets
    for ``spec.verify``: the signature is verified again, with the pod's own trust roots."""
    trust(registry, "team-cv", team_cv)
    key = SigningKey(team_cv.private)
    with client(registry) as api:
        api.create_model("lm")
        for number in (1, 2):
            api.create_version("lm")
            api.upload_artifact("lm", number, model_directory)
        api.sign_version("lm", 1, model_directory, key)
    required = {"MODELYARD_REQUIRE_SIGNATURE": "true"}
    assert pull(registry, "lm:2", tmp_path / "c0").returncode == 0  # nothing required: served as before
    unsigned = pull(registry, "lm:2", tmp_path / "c1", **required)
    assert unsigned.returncode == 1 and "SignatureRequired: lm:2 carries no signature from a trusted signer" in \
        " ".join(unsigned.stderr.split())
    signed = pull(registry, "lm:1", tmp_path / "c2", MODELYARD_SIGNERS="team-cv")
    assert signed.returncode == 0 and "signed by team-cv (key), verified here" in signed.stdout, signed.stderr
    assert not pull(registry, "lm:1", tmp_path / "c3", MODELYARD_SIGNERS="team-nlp").returncode == 0
    # the pod's own trust roots (a Secret), which do not hold team-cv's key: refused though the registry trusts it
    secret = tmp_path / "secret"
    secret.mkdir()
    shutil.copy(make_key_pair(tmp_path / "rotated", "x").public, secret / "team-cv.pub")
    invalid = pull(registry, "lm:1", tmp_path / "c4", MODELYARD_SIGNERS="team-cv", MODELYARD_TRUST_DIR=str(secret))
    assert invalid.returncode == 1 and "SignatureInvalid" in invalid.stderr
    shutil.copy(team_cv.public, secret / "team-cv.pub")
    assert pull(registry, "lm:1", tmp_path / "c5", MODELYARD_SIGNERS="team-cv",
                MODELYARD_TRUST_DIR=str(secret)).returncode == 0
    # a cached model directory whose file was changed after it was verified: the manifest no longer matches
    cached = next((tmp_path / "c2" / "programs").iterdir()) / "src" / "model" / "config.json"
    cached.write_text(cached.read_text() + " ")
    manifest = cached.parents[1] / "modelyard-files.json"
    files = json.loads(manifest.read_text())
    files["config.json"] = hashlib.sha256(cached.read_bytes()).hexdigest()  # as an attacker on the volume would
    manifest.write_text(json.dumps(files))
    tampered = pull(registry, "lm:1", tmp_path / "c2", MODELYARD_SIGNERS="team-cv")
    assert tampered.returncode == 1 and "SignatureInvalid" in tampered.stderr and "config.json" in tampered.stderr


def test_a_signature_is_not_recorded_when_its_signer_or_its_bytes_changed_while_it_was_verified(
        store: RegistryStore, team_cv: KeyPair, tmp_path: Path) -> None:
    """The server verifies outside the write transaction; the store records only what still holds inside it."""
    root = store.add_trust_root("team-cv", schemas.TrustRootCreate(method="key", pem=team_cv.public.read_text()),
                                created_by="token:admin")
    store.create_model("m")
    store.create_version("m")
    digest = "sha256:" + "ab" * 32
    store.mark_ready("m", 1, digest, 10)
    verified = [TrustRoot("team-cv", "key", root.pem, root.fingerprint)]
    record = {"bundle": b"{}", "bundle_digest": "sha256:" + "cd" * 32, "uploaded_by": "token:ci"}
    with pytest.raises(Conflict, match="is not sha256:ef"):  # verified against other bytes
        store.record_signature("m", 1, digest="sha256:" + "ef" * 32, signers=verified, **record)
    store.remove_trust_root("team-cv")  # removed while the bundle was being verified
    with pytest.raises(Conflict, match="changed in the trust store"):
        store.record_signature("m", 1, digest=digest, signers=verified, **record)
    other = make_key_pair(tmp_path / "other", "team-cv")
    store.add_trust_root("team-cv", schemas.TrustRootCreate(method="key", pem=other.public.read_text()),
                         created_by="token:admin")  # replaced by another key meanwhile
    with pytest.raises(Conflict, match="changed in the trust store"):
        store.record_signature("m", 1, digest=digest, signers=verified, **record)
    assert store.get_version("m", 1).signatures == []
    current = store.list_trust_roots()[0]
    signed = store.record_signature("m", 1, digest=digest, signers=[
        TrustRoot("team-cv", "key", current.pem, current.fingerprint)], **record)
    assert [s.signer for s in signed.signatures] == ["team-cv"]
    store.delete_version("m", 1)  # its signatures go with it
    with store.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(db.Signature)).scalar() == 0
