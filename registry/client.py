"""A typed Python client for the registry's REST API.

Answers are parsed into the same Pydantic shapes the server uses
(``modelyard.registry.kernel.schemas``); errors are raised as the same typed
exceptions (``modelyard.registry.kernel.errors``) carrying the server's problem
detail.  Connection failures are retried by the transport; uploads and
downloads stream, so artifacts of any size go through bounded memory.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from modelyard.registry.kernel import defaults, schemas
from modelyard.registry.kernel.defaults import Env
from modelyard.registry.kernel.digests import Progress, file_sha256, format_content_digest, parse_digest
from modelyard.registry.model.hf_archive import DirectoryArchive
from modelyard.registry.kernel.errors import Conflict, DigestMismatch, NotFound, RegistryError, Unavailable, error_from_problem
from modelyard.registry.kernel.names import ModelRef, parse_model_ref
from modelyard.registry.signing.sign import SigningKey, sign

CHUNK = 1 << 20
"""Called with the number of bytes just moved."""


def _default_url() -> str:
    return os.environ.get(Env.REGISTRY_URL) or defaults.REGISTRY_URL


class RegistryClient:
    """Synchronous client; use as a context manager or call :meth:`close`."""

    def __init__(self, url: str | None = None, token: str | None = None, *, timeout: float = 30.0,
                 retries: int = 3, transport: httpx.BaseTransport | None = None) -> None:
        token = token if token is not None else os.environ.get(Env.TOKEN)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = (url or _default_url()).rstrip("/")
        self._http = httpx.Client(
            base_url=self.url + "/api/v1", headers=headers, timeout=timeout,
            transport=transport or httpx.HTTPTransport(retries=retries),
        )

    def close(self) -> None:
        """Close the connection pool (the context manager does this)."""
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unavailable(f"cannot reach the registry at {self.url}: {exc}") from exc
        self._raise_for_problem(response)
        return response

    @staticmethod
    def _raise_for_problem(response: httpx.Response) -> None:
        if response.is_success or response.status_code == 304:
            return
        response.read()
        try:
            body = response.json()
        except ValueError:
            body = None
        raise error_from_problem(response.status_code, body if isinstance(body, dict) else None,
                                 f"HTTP {response.status_code} from {response.request.method} {response.request.url}")

    # -- models ---------------------------------------------------------------------

    def create_model(self, name: str, description: str = "", tags: Mapping[str, str] | None = None) -> schemas.Model:
        """See ``RegistryOperations.create_model``."""
        body = schemas.validated(schemas.ModelCreate, name=name, description=description, tags=dict(tags or {}))
        return schemas.Model.model_validate_json(self._request("POST", "/models", json=body.model_dump()).content)

    def ensure_model(self, name: str) -> schemas.Model:
        """Get the model, creating it first if it does not exist yet."""
        try:
            return self.get_model(name)
        except NotFound:
            pass
        try:
            return self.create_model(name)
        except Conflict:  # created concurrently: fine
            return self.get_model(name)

    def get_model(self, name: str) -> schemas.Model:
        """See ``RegistryOperations.get_model``."""
        return schemas.Model.model_validate_json(self._request("GET", f"/models/{name}").content)

    def list_models(self, *, prefix: str | None = None, tags: Mapping[str, str] | None = None,
                    alias: str | None = None, limit: int = 100,
                    cursor: str | None = None) -> schemas.Page[schemas.Model]:
        """See ``RegistryOperations.list_models``; :meth:`iter_models` walks every page."""
        params = self._model_filters(prefix, tags, alias, limit)
        if cursor:
            params["cursor"] = cursor
        return schemas.ModelPage.model_validate_json(self._request("GET", "/models", params=params).content)

    def iter_models(self, *, prefix: str | None = None, tags: Mapping[str, str] | None = None,
                    alias: str | None = None, page_size: int = 100) -> Iterator[schemas.Model]:
        """Every model :meth:`list_models` would list, page after page."""
        yield from self._pages("/models", self._model_filters(prefix, tags, alias, page_size),
                               schemas.ModelPage)

    @staticmethod
    def _model_filters(prefix: str | None, tags: Mapping[str, str] | None, alias: str | None,
                       limit: int) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, "tag": [f"{k}={v}" for k, v in (tags or {}).items()]}
        if prefix:
            params["prefix"] = prefix
        if alias:
            params["alias"] = alias
        return params

    def update_model(self, name: str, *, description: str | None = None,
                     tags: Mapping[str, str] | None = None) -> schemas.Model:
        """See ``RegistryOperations.update_model``."""
        body = schemas.validated(schemas.ModelUpdate, description=description,
                                 tags=None if tags is None else dict(tags)).model_dump(exclude_none=True)
        return schemas.Model.model_validate_json(self._request("PATCH", f"/models/{name}", json=body).content)

    def delete_model(self, name: str, *, force: bool = False) -> None:
        """See ``RegistryOperations.delete_model`` (needs an admin token)."""
        self._request("DELETE", f"/models/{name}", params={"force": "true"} if force else None)

    def _pages(self, path: str, params: dict[str, Any], page_type: Any) -> Iterator[Any]:
        while True:
            page = page_type.model_validate_json(self._request("GET", path, params=params).content)
            yield from page.items
            if not page.next_cursor:
                return
            params = {**params, "cursor": page.next_cursor}

    # -- versions -------------------------------------------------------------------

    def create_version(self, name: str, *, format: str | None = None, description: str = "",
                       metadata: Mapping[str, Any] | None = None, metrics: Mapping[str, float] | None = None,
                       tags: Mapping[str, str] | None = None, source: str | None = None) -> schemas.Version:
        """See ``RegistryOperations.create_version``."""
        body = schemas.validated(schemas.VersionCreate, format=format, description=description,
                                 metadata=dict(metadata or {}), metrics=dict(metrics or {}), tags=dict(tags or {}),
                                 source=source)
        answer = self._request("POST", f"/models/{name}/versions", json=body.model_dump(mode="json"))
        return schemas.Version.model_validate_json(answer.content)

    def get_version(self, name: str, version: int) -> schemas.Version:
        """See ``RegistryOperations.get_version``."""
        return schemas.Version.model_validate_json(self._request("GET", f"/models/{name}/versions/{version}").content)

    def list_versions(self, name: str, *, order: str = "asc", status: str | None = None,
                      tags: Mapping[str, str] | None = None, limit: int = 100,
                      cursor: str | None = None) -> schemas.Page[schemas.Version]:
        """See ``RegistryOperations.list_versions``; :meth:`iter_versions` walks every page."""
        params = self._version_filters(order, status, tags, limit)
        if cursor:
            params["cursor"] = cursor
        answer = self._request("GET", f"/models/{name}/versions", params=params)
        return schemas.VersionPage.model_validate_json(answer.content)

    def iter_versions(self, name: str, *, order: str = "asc", status: str | None = None,
                      tags: Mapping[str, str] | None = None, page_size: int = 100) -> Iterator[schemas.Version]:
        """Every version :meth:`list_versions` would list, page after page."""
        yield from self._pages(f"/models/{name}/versions", self._version_filters(order, status, tags, page_size),
                               schemas.VersionPage)

    @staticmethod
    def _version_filters(order: str, status: str | None, tags: Mapping[str, str] | None,
                         limit: int) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, "order": order,
                                  "tag": [f"{k}={v}" for k, v in (tags or {}).items()]}
        if status:
            params["status"] = status
        return params

    def update_version(self, name: str, version: int, *, description: str | None = None,
                       metrics: Mapping[str, float] | None = None,
                       tags: Mapping[str, str] | None = None) -> schemas.Version:
        """See ``RegistryOperations.update_version``."""
        body = schemas.validated(schemas.VersionUpdate, description=description,
                                 metrics=None if metrics is None else dict(metrics),
                                 tags=None if tags is None else dict(tags)).model_dump(exclude_none=True)
        answer = self._request("PATCH", f"/models/{name}/versions/{version}", json=body)
        return schemas.Version.model_validate_json(answer.content)

    def delete_version(self, name: str, version: int, *, force: bool = False) -> None:
        """See ``RegistryOperations.delete_version`` (``force`` needs an admin token)."""
        self._request("DELETE", f"/models/{name}/versions/{version}", params={"force": "true"} if force else None)

    # -- artifacts --------------------------------------------------------------------

    def upload_artifact(self, name: str, version: int, source: Path | str | BinaryIO, *,
                        sha256: str | None = None, progress: Progress | None = None) -> schemas.Version:
        """Stream a file to the version; its sha256 is computed first when not given.  A directory
        (a Hugging Face model) is sent as its canonical tar stream (``hf_archive``)."""
        if isinstance(source, (str, Path)) and Path(source).is_dir():
            archive = DirectoryArchive(Path(source))
            hex_digest = parse_digest(sha256) if sha256 else archive.sha256()
            return self._put_chunks(f"/models/{name}/versions/{version}/artifact", {}, archive.chunks(progress),
                                    hex_digest, archive.size)
        return self._upload(f"/models/{name}/versions/{version}/artifact", {}, source, sha256, progress)

    def upload_bento(self, name: str, version: int, source: Path | str | BinaryIO, tag: str, *,
                     sha256: str | None = None, progress: Progress | None = None) -> schemas.Version:
        """Record an exported ``.bento`` as the version's packaged form."""
        return self._upload(f"/models/{name}/versions/{version}/bento", {"tag": tag}, source, sha256, progress)

    def _upload(self, path: str, params: dict[str, str], source: Path | str | BinaryIO, sha256: str | None,
                progress: Progress | None) -> schemas.Version:
        if isinstance(source, (str, Path)):
            file = Path(source)
            hex_digest = parse_digest(sha256) if sha256 else file_sha256(file)
            with open(file, "rb") as handle:
                return self._put_stream(path, params, handle, hex_digest, progress, file.stat().st_size)
        if sha256 is None:
            raise ValueError("uploading from a stream needs its sha256")
        return self._put_stream(path, params, source, parse_digest(sha256), progress, None)

    def _put_stream(self, path: str, params: dict[str, str], handle: BinaryIO, hex_digest: str,
                    progress: Progress | None, size: int | None) -> schemas.Version:
        def body() -> Iterator[bytes]:
            while block := handle.read(CHUNK):
                if progress:
                    progress(len(block))
                yield block

        return self._put_chunks(path, params, body(), hex_digest, size)

    def _put_chunks(self, path: str, params: dict[str, str], body: Iterator[bytes], hex_digest: str,
                    size: int | None) -> schemas.Version:
        headers = {"Content-Digest": format_content_digest(hex_digest), "Content-Type": "application/octet-stream"}
        if size is not None:
            headers["Content-Length"] = str(size)
        answer = self._request("PUT", path, params=params, content=body, headers=headers,
                               timeout=httpx.Timeout(30.0, read=600.0))
        return schemas.Version.model_validate_json(answer.content)

    def delete_bento(self, name: str, version: int) -> None:
        """Forget the version's Bento (its artifact stays); ``modelyard package`` builds it again."""
        self._request("DELETE", f"/models/{name}/versions/{version}/bento")

    def download_artifact(self, name: str, version: int, destination: Path | str, *,
                          progress: Progress | None = None) -> schemas.Version:
        """Stream the artifact to ``destination`` atomically, verifying its digest."""
        found = self.get_version(name, version)
        if not found.digest:
            raise RegistryError(f"{name}:{version} is {found.status.value}: it has no artifact yet")
        self._download(f"/models/{name}/versions/{version}/artifact", found.digest, Path(destination), progress,
                       f"{name}:{version}")
        return found

    def download_bento(self, name: str, version: int, destination: Path | str, *,
                       progress: Progress | None = None) -> schemas.Version:
        """Stream the version's ``.bento`` to ``destination`` atomically, verifying its digest."""
        found = self.get_version(name, version)
        if found.bento is None:
            raise NotFound(f"{name}:{version} is not packaged yet")
        self._download(f"/models/{name}/versions/{version}/bento", found.bento.digest, Path(destination), progress,
                       f"the Bento of {name}:{version}")
        return found

    def _download(self, path: str, digest: str, destination: Path, progress: Progress | None, what: str) -> None:
        """The bytes go to a temporary file beside ``destination``, which replaces it only
        after their sha256 matched ``digest``."""
        expected = parse_digest(digest)
        destination.parent.mkdir(parents=True, exist_ok=True)
        hasher = hashlib.sha256()
        fd, temp_name = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                try:
                    with self._http.stream("GET", path, timeout=httpx.Timeout(30.0, read=600.0)) as response:
                        self._raise_for_problem(response)
                        for block in response.iter_bytes(CHUNK):
                            hasher.update(block)
                            out.write(block)
                            if progress:
                                progress(len(block))
                except httpx.TransportError as exc:
                    raise Unavailable(f"download of {what} from {self.url} failed: {exc}") from exc
                out.flush()
                os.fsync(out.fileno())
            if hasher.hexdigest() != expected:
                raise DigestMismatch(f"downloaded {what} has sha256:{hasher.hexdigest()}, the registry records "
                                     f"{digest}; the file was discarded")
            os.replace(temp_name, destination)
        finally:
            if os.path.exists(temp_name):
                os.unlink(temp_name)

    # -- aliases --------------------------------------------------------------------

    def set_alias(self, name: str, alias: str, version: int) -> schemas.Alias:
        """See ``RegistryOperations.set_alias``."""
        answer = self._request("PUT", f"/models/{name}/aliases/{alias}", json={"version": version})
        return schemas.Alias.model_validate_json(answer.content)

    def get_alias(self, name: str, alias: str) -> schemas.Alias:
        """See ``RegistryOperations.get_alias``."""
        return schemas.Alias.model_validate_json(self._request("GET", f"/models/{name}/aliases/{alias}").content)

    def delete_alias(self, name: str, alias: str) -> None:
        """See ``RegistryOperations.delete_alias``."""
        self._request("DELETE", f"/models/{name}/aliases/{alias}")

    def alias_history(self, name: str, alias: str, *, limit: int = 100,
                      cursor: str | None = None) -> schemas.Page[schemas.AliasMove]:
        """Who moved the alias, from which version to which, when: newest first."""
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        answer = self._request("GET", f"/models/{name}/aliases/{alias}/history", params=params)
        return schemas.AliasMovePage.model_validate_json(answer.content)

    def protect_alias(self, name: str, alias: str, protection: schemas.AliasProtection) -> schemas.AliasProtection:
        """Protect the alias (admin token): moves then need admin scope or a version meeting the rules."""
        answer = self._request("PUT", f"/models/{name}/aliases/{alias}/protection", json=protection.model_dump())
        return schemas.AliasProtection.model_validate_json(answer.content)

    def unprotect_alias(self, name: str, alias: str) -> None:
        self._request("DELETE", f"/models/{name}/aliases/{alias}/protection")

    def alias_protection(self, name: str, alias: str) -> schemas.AliasProtection | None:
        """The alias's rules, or None when it is not protected."""
        try:
            answer = self._request("GET", f"/models/{name}/aliases/{alias}/protection")
        except NotFound:
            return None
        return schemas.AliasProtection.model_validate_json(answer.content)

    # -- signatures -------------------------------------------------------------------

    def upload_signature(self, name: str, version: int, bundle: bytes) -> schemas.Version:
        """Upload an OpenSSF model signature bundle; the registry records it under each trusted signer
        that verifies it against the version's bytes (``Invalid`` saying why otherwise)."""
        answer = self._request("PUT", f"/models/{name}/versions/{version}/signature", content=bundle,
                               headers={"Content-Digest": format_content_digest(hashlib.sha256(bundle).hexdigest()),
                                        "Content-Type": "application/json"})
        return schemas.Version.model_validate_json(answer.content)

    def sign_version(self, name: str, version: int, path: Path | str, key: SigningKey) -> schemas.Version:
        """Sign the file or model directory pushed as the version (``signing.sign``) and upload the signature."""
        return self.upload_signature(name, version, sign(Path(path), key))

    def signature_bundle(self, name: str, version: int, signer: str, *, digest: str | None = None) -> bytes:
        """The bundle ``signer`` verified on the version; ``DigestMismatch`` unless its sha256 is ``digest``
        (the ``bundle_digest`` the version's answer lists), when given."""
        answer = self._request("GET", f"/models/{name}/versions/{version}/signatures/{signer}")
        if digest is not None and f"sha256:{hashlib.sha256(answer.content).hexdigest()}" != digest:
            raise DigestMismatch(f"{signer}'s signature of {name}:{version} is not {digest}")
        return answer.content

    def list_trust(self) -> list[schemas.TrustRoot]:
        answer = self._request("GET", "/trust")
        return [schemas.TrustRoot.model_validate(item) for item in answer.json()]

    def add_trust(self, signer: str, body: schemas.TrustRootCreate) -> schemas.TrustRoot:
        """Trust a signer's key or CA (admin token)."""
        answer = self._request("PUT", f"/trust/{signer}", json=body.model_dump())
        return schemas.TrustRoot.model_validate_json(answer.content)

    def remove_trust(self, signer: str) -> None:
        self._request("DELETE", f"/trust/{signer}")

    # -- deployments ------------------------------------------------------------------

    def record_evaluation(self, name: str, version: int,
                          evaluation: schemas.EvaluationCreate) -> schemas.Evaluation:
        """Record evidence measured on a version: ``canary`` with the cluster's report token, ``offline``
        with an ``evaluate`` token (``Forbidden`` otherwise)."""
        answer = self._request("POST", f"/models/{name}/versions/{version}/evaluations",
                               content=evaluation.model_dump_json(), headers={"Content-Type": "application/json"})
        return schemas.Evaluation.model_validate_json(answer.content)

    def list_evaluations(self, name: str, version: int, *, kind: str | None = None, source: str | None = None,
                         verdict: str | None = None, limit: int = 100,
                         cursor: str | None = None) -> schemas.Page[schemas.Evaluation]:
        """A version's evaluations, newest first."""
        params: dict[str, Any] = {"limit": limit}
        for key, value in (("kind", kind), ("source", source), ("verdict", verdict), ("cursor", cursor)):
            if value is not None:
                params[key] = value
        answer = self._request("GET", f"/models/{name}/versions/{version}/evaluations", params=params)
        return schemas.Page[schemas.Evaluation].model_validate_json(answer.content)

    def report_deployment(self, cluster: str, namespace: str, name: str,
                          report: schemas.DeploymentReport) -> schemas.Deployment:
        """See ``RegistryOperations.report_deployment`` (a report-scope token is enough)."""
        answer = self._request("PUT", f"/deployments/{cluster}/{namespace}/{name}",
                               content=report.model_dump_json(), headers={"Content-Type": "application/json"})
        return schemas.Deployment.model_validate_json(answer.content)

    def remove_deployment(self, cluster: str, namespace: str, name: str) -> None:
        """See ``RegistryOperations.remove_deployment``."""
        self._request("DELETE", f"/deployments/{cluster}/{namespace}/{name}")

    def list_deployments(self, *, model: str | None = None, version: int | None = None, cluster: str | None = None,
                         namespace: str | None = None, phase: str | None = None, limit: int = 100,
                         cursor: str | None = None) -> schemas.Page[schemas.Deployment]:
        """See ``RegistryOperations.list_deployments``; :meth:`iter_deployments` walks every page."""
        params = self._deployment_filters(model, version, cluster, namespace, phase, limit)
        if cursor:
            params["cursor"] = cursor
        answer = self._request("GET", "/deployments", params=params)
        return schemas.DeploymentPage.model_validate_json(answer.content)

    def iter_deployments(self, *, model: str | None = None, version: int | None = None,
                         cluster: str | None = None, namespace: str | None = None, phase: str | None = None,
                         page_size: int = 100) -> Iterator[schemas.Deployment]:
        yield from self._pages("/deployments", self._deployment_filters(model, version, cluster, namespace, phase,
                                                                        page_size), schemas.DeploymentPage)

    @staticmethod
    def _deployment_filters(model: str | None, version: int | None, cluster: str | None, namespace: str | None,
                            phase: str | None, limit: int) -> dict[str, Any]:
        given = {"model": model, "version": version, "cluster": cluster, "namespace": namespace, "phase": phase}
        return {"limit": limit, **{k: v for k, v in given.items() if v is not None}}

    def resolve(self, ref: str | ModelRef) -> schemas.Version:
        """``NAME@ALIAS`` or ``NAME:VERSION`` → that version."""
        ref = parse_model_ref(ref) if isinstance(ref, str) else ref
        number = self.get_alias(ref.name, ref.alias).version if ref.alias else ref.version
        assert number is not None
        return self.get_version(ref.name, number)

    # -- events ---------------------------------------------------------------------

    def events(self, after: int = 0, *, timeout: float = 0, limit: int = 1000) -> schemas.EventPage:
        """Events after ``after``; with ``timeout`` > 0 the server holds the request until one happens."""
        answer = self._request("GET", "/events", params={"after": after, "timeout": timeout, "limit": limit},
                               timeout=httpx.Timeout(30.0, read=timeout + 30.0))
        return schemas.EventPage.model_validate_json(answer.content)
