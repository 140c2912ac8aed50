"""DKIM (RFC 6376, RSA and Ed25519) and ARC (RFC 8617) verification by dkimpy, as a job of the worker pool.

dkimpy parses, canonicalises and hashes (Ed25519 through pynacl); RSA signatures are verified by ``cryptography``
(OpenSSL) in place of dkimpy's pure-Python RSA, with the same answers (``_dkimpy`` lists what is replaced and why);
its DNS lookups never leave the job: the parent looks
up every key a message names first (``key_names``, on mtad's asynchronous resolver, with its timeouts and
cache) and hands them over with the message; dkimpy's ``dnsfunc`` answers from that map. A key whose lookup
failed temporarily makes its signature ``temperror`` (dkimpy itself would call it a plain failure).

``verifier(processes)`` is a ``WorkerPool`` of ``(message, keys, max_signatures)`` -> ``DkimOutcome``:
``processes == 0`` verifies in this process (on the event loop for small messages, in a thread past
``INLINE``). Verification never raises: a malformed signature is ``permerror``, any other trouble ``fail``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from dataclasses import dataclass
from typing import Any, Iterable

from mtad.workers.pool import JobKind, WorkerPool

log = logging.getLogger("mtad.verdicts")

BATCH = 32
TIMEOUT = 60.0
INLINE = 65_536  # bytes: verified on the event loop up to this size when no worker runs, larger in a thread
TEMP = "temp"  # a key map value: the lookup failed temporarily

_TAG = re.compile(r"(?:^|;)\s*([a-zA-Z][a-zA-Z0-9_]*)\s*=\s*([^;]*)")
_SIGNED = ("dkim-signature", "arc-message-signature", "arc-seal")


@dataclass(frozen=True)
class Signature:
    """One DKIM signature's verdict."""

    result: str  # pass | fail | neutral | temperror | permerror
    domain: str  # d=
    selector: str  # s=
    algorithm: str  # a=
    b: str  # the first 8 characters of b= (RFC 6008 header.b), to tell signatures apart
    reason: str = ""


@dataclass(frozen=True)
class DkimOutcome:
    signatures: tuple[Signature, ...]
    arc: str  # pass | fail | none
    arc_reason: str = ""


def tags(value: str) -> dict[str, str]:
    """The tag=value list of a signature header (folding whitespace removed), first instance of each tag."""
    out: dict[str, str] = {}
    for name, val in _TAG.findall(value):
        name = name.lower()
        if name not in out:
            out[name] = "".join(val.split())  # what re.sub(r"\s+", "", val) gives (the same whitespace), faster
    return out


def domain_selector(value: str) -> tuple[str, str]:
    """``tags(value)``'s ``d`` and ``s`` ("" when absent), without making the other tags (``b=`` is most of a
    signature)."""
    d = s = None
    for m in _TAG.finditer(value):
        name = m.group(1)
        if len(name) != 1:
            continue
        name = name.lower()
        if name == "d" and d is None:
            d = "".join(m.group(2).split())
        elif name == "s" and s is None:
            s = "".join(m.group(2).split())
        else:
            continue
        if d is not None and s is not None:
            break
    return d or "", s or ""


def key_names(fields: Iterable[tuple[str, str]], max_signatures: int) -> list[str]:
    """The key records (``s._domainkey.d``) the signatures and seals of a message name, at most
    ``max_signatures`` DKIM signatures, each name once, lower case."""
    names: list[str] = []
    dkim_count = 0
    for name, value in fields:
        lower = name.lower()
        if lower not in _SIGNED:
            continue
        if lower == "dkim-signature":
            dkim_count += 1
            if dkim_count > max_signatures:
                continue
        d, s = domain_selector(value)
        d, s = d.lower().rstrip("."), s.lower()
        if d and s and len(d) + len(s) < 240:
            key = f"{s}._domainkey.{d}"
            if key not in names:
                names.append(key)
    return names


def _int2str(n: int, length: int = -1) -> bytearray:
    """``dkim.crypto.int2str`` with the same results, by ``int.to_bytes`` (dkimpy's goes byte by byte in Python:
    half of a verification's CPU time); ``length`` keeps the low bytes, as dkimpy's does."""
    assert n >= 0
    if length < 0:
        return bytearray(n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big"))
    return bytearray((n & ((1 << (8 * length)) - 1)).to_bytes(length, "big"))


def _str2int(s: bytes) -> int:
    """``dkim.crypto.str2int`` with the same results, by ``int.from_bytes``."""
    return int.from_bytes(bytes(s), "big")


KEY_CACHE = 1024  # parsed key records kept per process (a key record's text is its cache key)

_DKIMPY: list = []
REPLACED: dict = {}  # dkimpy's own functions, kept for the tests that compare them with ours
_KEYS: dict = {}  # (name, key record) -> dkimpy's parsed key (evaluate_pk's answer)
_RSA: dict = {}  # (modulus, exponent) -> cryptography's public key
_HASHES: dict = {}  # dkimpy's hash name -> cryptography's prehashed algorithm
_LIB = type("_Lib", (), {})()  # names from cryptography, pynacl and dkimpy, bound on first use (``_dkimpy``)
_RUN = re.compile(rb"\t[\t ]*| [\t ]+")


def _re_btag(fws: bytes) -> re.Pattern:
    """``dkim.RE_BTAG`` (a signature's ``b=`` value, to empty it before hashing) matching the same: dkimpy's
    ``(?:FWS[base64])*`` where FWS is ``(?:(?:\\s*\\r?\\n)?\\s+)?``, i.e. any run of white space, written
    ``(?:\\s*[base64]+)*``: the same strings (white space and base64, ending in base64), the longest first
    as before (nothing after it can fail), one iteration per run of base64 instead of per character."""
    return re.compile(rb"([;\s]b" + fws + rb"=)(?:\s*[a-zA-Z0-9+/=]+)*(?:\r?\n\Z)?")


def _compress_whitespace(content: bytes) -> bytes:
    """``dkim.canonicalization.compress_whitespace`` with the same results: every run of WSP becomes one space,
    but a lone space (most of them) is not replaced by itself, which was most of a relaxed body's cost."""
    return _RUN.sub(b" ", content)


def _unfold_header_value(content: bytes) -> bytes:
    """``dkim.canonicalization.unfold_header_value`` (``re.sub(b"\\r?\\n", b"", content)``) with the same results:
    every LF goes, with the CR right before it."""
    return content.replace(b"\r\n", b"").replace(b"\n", b"")


def _evaluate_pk(name: bytes, s: bytes | str | None):
    """``dkim.evaluate_pk`` remembered per (name, key record): the record's text comes from mtad's resolver
    (its TTL), so a changed or expired record is a new entry; what dkimpy refuses is never remembered."""
    key = (name, s)
    found = _KEYS.get(key)
    if found is None:
        found = REPLACED["evaluate_pk"](name, s)
        if len(_KEYS) >= KEY_CACHE:
            _KEYS.clear()
        _KEYS[key] = found
    return found


def _rsa_verify(hash: Any, signature: bytes, public_key: dict) -> bool:
    """``dkim.crypto.RSASSA_PKCS1_v1_5_verify`` by the ``cryptography`` package (OpenSSL) instead of dkimpy's
    Python RSA, same answers: the usual case (a signature as long as the modulus and below it, SHA-256 or SHA-1)
    is verified by OpenSSL; anything else (a short or oversized signature, a digest too large for the modulus,
    a key OpenSSL refuses) goes to dkimpy's own function, so its results and exceptions stay."""
    n, e = public_key["modulus"], public_key["publicExponent"]
    algorithm = _HASHES.get(hash.name.lower())
    size = (n.bit_length() + 7) // 8
    if algorithm is None or len(signature) != size or int.from_bytes(signature, "big") >= n or size < 62:
        return REPLACED["RSASSA_PKCS1_v1_5_verify"](hash, signature, public_key)
    key = _RSA.get((n, e))
    if key is None:
        from cryptography.hazmat.primitives.asymmetric import rsa
        try:
            key = rsa.RSAPublicNumbers(e, n).public_key()
        except Exception:  # noqa: BLE001 - a key OpenSSL will not take (even exponent, say): dkimpy's answer
            return REPLACED["RSASSA_PKCS1_v1_5_verify"](hash, signature, public_key)
        if len(_RSA) >= KEY_CACHE:
            _RSA.clear()
        _RSA[(n, e)] = key
    try:
        key.verify(signature, hash.digest(), _LIB.pkcs1v15, algorithm)
        return True
    except _LIB.InvalidSignature:
        return False
    except Exception:  # noqa: BLE001 - OpenSSL's refusal of something dkimpy takes: dkimpy's answer
        return REPLACED["RSASSA_PKCS1_v1_5_verify"](hash, signature, public_key)


def _dkimpy():
    """dkimpy, imported on first use (a daemon without inbound mail never loads it), with these replaced by
    equivalents above (tests/unit/test_verdicts.py checks they agree): its integer conversions, its RSA
    verification (OpenSSL through ``cryptography``), its key record parsing (remembered), and the relaxed
    canonicalisation's whitespace compression and unfolding, and the pattern that empties ``b=``. Signing by dkimpy (the tests' independent signer) is unchanged."""
    if not _DKIMPY:
        import dkim
        import dkim.canonicalization
        import dkim.crypto
        import nacl.exceptions
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding, utils
        from dkim.canonicalization import (CanonicalizationPolicy, InvalidCanonicalizationPolicyError, Relaxed,
                                           correct_empty_body, strip_trailing_lines)
        from dkim.util import DuplicateTag, InvalidTagSpec, InvalidTagValueList
        _HASHES.update(sha256=utils.Prehashed(hashes.SHA256()), sha1=utils.Prehashed(hashes.SHA1()))
        _LIB.__dict__.update(
            InvalidSignature=InvalidSignature, pkcs1v15=padding.PKCS1v15(),
            BadSignatureError=nacl.exceptions.BadSignatureError, CanonicalizationPolicy=CanonicalizationPolicy,
            InvalidCanonicalizationPolicyError=InvalidCanonicalizationPolicyError, Relaxed=Relaxed,
            correct_empty_body=correct_empty_body, strip_trailing_lines=strip_trailing_lines,
            DuplicateTag=DuplicateTag, InvalidTagSpec=InvalidTagSpec, InvalidTagValueList=InvalidTagValueList)
        REPLACED.update(int2str=dkim.crypto.int2str, str2int=dkim.crypto.str2int, evaluate_pk=dkim.evaluate_pk,
                        RSASSA_PKCS1_v1_5_verify=dkim.RSASSA_PKCS1_v1_5_verify,
                        compress_whitespace=dkim.canonicalization.compress_whitespace,
                        unfold_header_value=dkim.canonicalization.unfold_header_value, RE_BTAG=dkim.RE_BTAG)
        dkim.crypto.int2str = _int2str
        dkim.crypto.str2int = _str2int
        dkim.evaluate_pk = _evaluate_pk
        dkim.RSASSA_PKCS1_v1_5_verify = _rsa_verify
        dkim.canonicalization.compress_whitespace = _compress_whitespace
        dkim.canonicalization.unfold_header_value = _unfold_header_value
        dkim.RE_BTAG = _re_btag(dkim.FWS)
        _DKIMPY.append(dkim)
    return _DKIMPY[0]


_LINES = re.compile(rb"\r?\n")
_FIELD_NAME = re.compile(rb"([\x21-\x7e]+?):")
_TAG_NAME = re.compile(rb"^[a-zA-Z](\w)*")
_H_LIST = re.compile(rb"\s*:\s*")
_WSP = re.compile(rb"\s+")
_TRAILING_WSP = re.compile(rb"[\t ]+\r\n")
MINKEY = 1024  # bits: dkimpy's minkey (RFC 8301)
OWN_STEPS = True  # False: every signature by dkimpy's ``DKIM.verify`` (the tests compare the two)


def _rfc822_parse(message: bytes) -> tuple[list[list[bytes]], bytes]:
    """``dkim.rfc822_parse`` with the same results and exceptions, its patterns compiled once (dkimpy's goes
    through ``re``'s pattern cache for every header line)."""
    headers: list[list[bytes]] = []
    if message.count(b"\n") == message.count(b"\r\n"):  # no bare LF (as ingress stores it): the same split, faster
        lines = message.split(b"\r\n")
    else:
        lines = _LINES.split(message)
    i = 0
    while i < len(lines):
        line = lines[i]
        if len(line) == 0:
            i += 1
            break
        if line[0] in (0x09, 0x20):
            headers[-1][1] += line + b"\r\n"
        else:
            m = _FIELD_NAME.match(line)
            if m is not None:
                headers.append([m.group(1), line[m.end(0):] + b"\r\n"])
            elif not line.startswith(b"From "):
                dkim = _dkimpy()
                raise dkim.MessageFormatError("Unexpected characters in RFC822 header: %s" % line)
        i += 1
    return headers, b"\r\n".join(lines[i:])


def _parse_tag_value(tag_list: bytes) -> dict[bytes, bytes]:
    """``dkim.util.parse_tag_value`` with the same results and exceptions, its pattern compiled once."""
    tags: dict[bytes, bytes] = {}
    tag_specs = tag_list.strip().split(b";")
    if not tag_specs[-1]:
        tag_specs.pop()
    for tag_spec in tag_specs:
        key, sep, value = tag_spec.partition(b"=")  # no "=": dkimpy's unpacking fails (ValueError)
        key = key.strip()
        if not sep or _TAG_NAME.match(key) is None:
            raise _LIB.InvalidTagSpec(tag_spec)
        if key in tags:
            raise _LIB.DuplicateTag(key)
        tags[key] = value.strip()
    return tags


def _relaxed_body(body: bytes) -> bytes:
    """``dkim.canonicalization.Relaxed.canonicalize_body`` with the same results; the two substitutions are
    skipped when they cannot match (no white space before a line end; no tab and no double space), which a
    ``find`` tells far faster than the patterns' scan of every byte."""
    if b" \r\n" in body or b"\t\r\n" in body:
        body = _TRAILING_WSP.sub(b"\r\n", body)
    if b"\t" in body or b"  " in body:
        body = _RUN.sub(b" ", body)
    return _LIB.correct_empty_body(_LIB.strip_trailing_lines(body))


def _verify_signature(dkim, headers: list, body: bytes, sig_header: list, dnsfunc, bodies: dict) -> bool:
    """One signature, as ``dkim.DKIM(message, minkey=MINKEY).verify(idx, dnsfunc)`` decides it (its
    ``verify_headerprep``, ``verify_sig`` and ``verify_sig_process``, step for step, with dkimpy's own checks,
    key parsing and exceptions), without what costs and decides nothing: the message is parsed once for all its
    signatures (``headers``, ``body``: ``_rfc822_parse``'s), only the signed header fields are canonicalised
    (dkimpy canonicalises every field, then picks the signed ones: the same fields, as a field name holds no
    white space), a canonical body is made once per canonicalisation (``bodies``), and no debug line is
    formatted. Returns True/False or raises what dkimpy raises."""
    try:
        sig = _parse_tag_value(sig_header[1])
    except _LIB.InvalidTagValueList as e:
        raise dkim.MessageFormatError(e) from None
    dkim.validate_signature_fields(sig)
    include_headers = [x.lower() for x in _H_LIST.split(sig[b"h"])]
    name = sig[b"s"] + b"._domainkey." + sig[b"d"] + b"."
    try:
        pk, keysize, ktag, seqtlsrpt = dkim.load_pk_from_dns(name, dnsfunc, timeout=5)
    except (dkim.KeyFormatError, binascii.Error, dkim.DnsTimeoutError):
        return False
    if seqtlsrpt:  # dkimpy's verify_sig_process for a message that is no TLS report (tlsrpt=False)
        raise dkim.ValidationError("Message is not tlsrpt and Service Type is tlsrpt")
    try:
        canon_policy = _LIB.CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
    except _LIB.InvalidCanonicalizationPolicyError as e:
        raise dkim.MessageFormatError("invalid c= value: %s" % e.args[0]) from None
    hasher = dkim.HASH_ALGORITHMS[sig[b"a"]]
    if b"bh" in sig:
        algorithm = canon_policy.body_algorithm
        canonical = bodies.get(algorithm)
        if canonical is None:
            canonical = _relaxed_body(body) if algorithm is _LIB.Relaxed else algorithm.canonicalize_body(body)
            bodies[algorithm] = canonical
        if b"l" in sig:
            canonical = canonical[:int(sig[b"l"])]
        bodyhash = hasher(canonical).digest()
        try:
            bh = base64.b64decode(_WSP.sub(b"", sig[b"bh"]))
        except TypeError as e:
            raise dkim.MessageFormatError(str(e)) from None
        if bodyhash != bh:
            raise dkim.ValidationError("body hash mismatch (got %s, expected %s)" %
                                       (base64.b64encode(bodyhash), sig[b"bh"]))
    if b"from" in include_headers:
        include_headers.append(b"from")
    h = hasher()
    signed = canon_policy.canonicalize_headers(dkim.select_headers(headers, include_headers))
    for x, y in signed:
        h.update(x)
        h.update(b":")
        h.update(y)
    for x, y in canon_policy.canonicalize_headers([(sig_header[0], dkim.RE_BTAG.sub(b"\\1", sig_header[1]))]):
        h.update(x)
        h.update(b":")
        h.update(y.rstrip())
    signature = base64.b64decode(_WSP.sub(b"", sig[b"b"]))
    if ktag == b"rsa":
        try:
            res = dkim.RSASSA_PKCS1_v1_5_verify(h, signature, pk)
            if res and keysize < MINKEY:
                raise dkim.KeyFormatError("public key too small: %d" % keysize)
            return res
        except (TypeError, dkim.DigestTooLargeError) as e:
            raise dkim.KeyFormatError("digest too large for modulus: %s" % e) from None
    if ktag == b"ed25519":
        try:
            pk.verify(h.digest(), signature)
            return True
        except _LIB.BadSignatureError:
            return False
    raise dkim.UnknownKeyTypeError(ktag)


def verify(message: bytes, keys: dict[str, str | None], max_signatures: int) -> tuple:
    """In a child or here: the plain-data answer ``(signatures, arc, arc_reason)``, each signature
    ``(result, d, s, a, b, reason)``."""
    dkim = _dkimpy()

    temp: set[str] = set()

    def dnsfunc(name: bytes | str, timeout: float = 5) -> bytes | None:
        text = (name.decode("ascii", "replace") if isinstance(name, bytes) else name).rstrip(".").lower()
        value = keys.get(text)
        if value == TEMP:
            temp.add(text)
            return None
        return value.encode("utf-8", "replace") if value is not None else None

    signatures: list[tuple] = []
    try:
        if OWN_STEPS:
            headers, body = _rfc822_parse(message)
            d = None
        else:
            d = dkim.DKIM(message, minkey=MINKEY)
            headers = d.headers
    except Exception as exc:  # noqa: BLE001 - a message dkimpy cannot take: no signature checked
        return [], "none", f"unparsable: {exc.__class__.__name__}"
    sig_headers = [h for h in headers if h[0].lower() == b"dkim-signature"]
    bodies: dict = {}
    for idx in range(min(len(sig_headers), max_signatures)):
        sig_value = sig_headers[idx][1]
        t = tags(sig_value.decode("utf-8", "replace"))
        info = (t.get("d", "").lower(), t.get("s", ""), t.get("a", ""), t.get("b", "")[:8])
        key = f"{info[1].lower()}._domainkey.{info[0]}"
        try:
            if d is None:
                ok = _verify_signature(dkim, headers, body, sig_headers[idx], dnsfunc, bodies)
            else:
                ok = d.verify(idx=idx, dnsfunc=dnsfunc)
        except dkim.DKIMException as exc:
            if "body hash mismatch" in str(exc):  # the body changed on the way: a failed signature (RFC 6376 §6.1.3)
                signatures.append(("fail", *info, "body hash did not verify"))
            else:  # a signature or key that cannot be used (RFC 8601 §2.7.1 permerror)
                signatures.append(("permerror", *info, str(exc)[:100]))
            continue
        except Exception as exc:  # noqa: BLE001 - dkimpy's own trouble with a hostile message
            signatures.append(("permerror", *info, exc.__class__.__name__))
            continue
        if ok:
            signatures.append(("pass", *info, ""))
        elif key in temp:
            signatures.append(("temperror", *info, "key lookup failed"))
        elif keys.get(key) is None:
            signatures.append(("permerror", *info, "no key published"))
        else:
            signatures.append(("fail", *info, "signature did not verify"))
    arc, arc_reason = "none", ""
    try:
        if any(h[0].lower() == b"arc-seal" for h in headers):
            cv, _, comment = dkim.arc_verify(message, dnsfunc=dnsfunc)
            arc = {b"pass": "pass", b"none": "none"}.get(cv, "fail")
            arc_reason = str(comment)[:200]
    except Exception as exc:  # noqa: BLE001 - a broken chain is a failed chain
        arc, arc_reason = "fail", f"{exc.__class__.__name__}"
    return signatures, arc, arc_reason


def verify_batch(payload: list[tuple], memo: dict) -> list[tuple]:
    """In the child: ``payload`` is ``[(message, keys, max_signatures), ...]``; one answer per item."""
    return [verify(*item) for item in payload]


def _outcome(answer: Any) -> DkimOutcome:
    signatures, arc, reason = answer
    return DkimOutcome(tuple(Signature(*s) for s in signatures), arc, reason)


_Item = tuple[bytes, dict, int]


class _Verifying(JobKind[_Item, DkimOutcome]):
    name = "DKIM verification"
    target = f"{__name__}:verify_batch"
    batch = BATCH
    timeout = TIMEOUT
    hold_while_busy = True  # one frame for the messages that came while the worker verified
    log = log

    def encode(self, items: list[_Item], sent: set) -> Any:
        return [(m, k, n) for m, k, n in items]

    def decode(self, item: _Item, answer: Any) -> DkimOutcome:
        return _outcome(answer)

    def run_here(self, item: _Item) -> DkimOutcome:
        return _outcome(verify(*item))

    def offload(self, item: _Item) -> bool:
        return len(item[0]) > INLINE


def verifier(processes: int) -> WorkerPool[_Item, DkimOutcome]:
    return WorkerPool(_Verifying(), processes)
