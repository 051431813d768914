"""``spec.model`` → a ready model version, through the registry client.

Failures are sorted into what the status reports: the registry could not be asked
(``RegistryUnreachable``: retried with backoff, the phase stays) or it answered that the
model, alias or version is not there or not ready (``ResolveFailure``: phase Failed with
the reason, retried slowly and healed by the registry's events).
"""

from __future__ import annotations

from modelyard.operator.spec import ModelSelector, VerifySpec
from modelyard.operator.status import Reason
from modelyard.operator.values import ResolvedVersion
from modelyard.registry.client import RegistryClient
from modelyard.registry.kernel.errors import Forbidden, NotFound, RegistryError, Unauthorized, Unavailable

MODEL_NOT_FOUND, ALIAS_NOT_FOUND, VERSION_NOT_FOUND, VERSION_NOT_READY = (
    Reason.MODEL_NOT_FOUND, Reason.ALIAS_NOT_FOUND, Reason.VERSION_NOT_FOUND, Reason.VERSION_NOT_READY)


class ResolveFailure(Exception):
    """The registry answered, and the answer cannot be deployed (yet)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class RegistryUnreachable(Exception):
    """The registry did not answer (network, 5xx, credentials)."""


def resolve(client: RegistryClient, model: ModelSelector, verify: VerifySpec | None = None) -> ResolvedVersion:
    """The version ``model`` names, ready, and where ``verify`` requires it, signed by a required signer the
    registry's trust store still vouches for (else ``SignatureRequired``: no pod is started for it)."""
    name, alias = model.name, model.alias
    try:
        if alias:
            try:
                number = client.get_alias(name, alias).version
            except NotFound:
                client.get_model(name)  # NotFound here means the model itself is missing
                raise ResolveFailure(ALIAS_NOT_FOUND, f"model {name!r} has no alias {alias!r}") from None
        else:
            assert model.version is not None  # a selector has exactly one of alias and version
            number = model.version
        try:
            version = client.get_version(name, number)
        except NotFound:
            client.get_model(name)
            raise ResolveFailure(VERSION_NOT_FOUND, f"model {name!r} has no version {number}") from None
    except NotFound:
        raise ResolveFailure(MODEL_NOT_FOUND, f"model {name!r} is not registered") from None
    except (Unavailable, Unauthorized, Forbidden) as error:
        raise RegistryUnreachable(str(error)) from error
    except RegistryError as error:
        if error.status >= 500:
            raise RegistryUnreachable(str(error)) from error
        raise
    if version.status != "ready" or not version.digest:
        raise ResolveFailure(VERSION_NOT_READY, f"{name}:{number} is {version.status} (its artifact is not "
                                                f"uploaded and verified yet)")
    if verify is not None and verify.required:
        signed = {s.signer for s in version.signatures if s.trusted}
        wanted = set(verify.signers) or signed
        if not signed & wanted:
            whom = " or ".join(sorted(verify.signers)) if verify.signers else "a trusted signer"
            raise ResolveFailure(Reason.SIGNATURE_REQUIRED,
                                 f"{name}:{number} carries no signature from {whom} that the registry's trust store "
                                 f"vouches for (spec.verify); sign it: modelyard versions sign {name}:{number} PATH "
                                 "--sign-key KEY")
    facts = version.metadata.get("hf")
    return ResolvedVersion(name=name, version=number, digest=version.digest, alias=alias or "",
                           format=version.format.value if version.format else "",
                           facts=facts if isinstance(facts, dict) else {})
