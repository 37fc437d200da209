"""TLS settings for `tls://` addresses: certificate, key, CA, optional mutual TLS."""

from __future__ import annotations

import ssl
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """Files for TLS. Peers are trusted when their certificate chains to `ca`.

    cert, key: this side's certificate and private key (PEM). A listener
        needs them; a connecting side needs them only for mutual TLS.
    ca: the CA bundle that peers' certificates must chain to.
    require_client_cert: a listener refuses clients without a valid certificate.
    check_hostname: also match the server certificate to the host connected
        to; off by default because cluster peers are usually addressed by IP
        and trust comes from the cluster's own CA.
    """

    ca: str
    cert: str | None = None
    key: str | None = None
    require_client_cert: bool = False
    check_hostname: bool = False

    def server_context(self) -> ssl.SSLContext:
        if not self.cert:
            raise ValueError("a TLS listener needs a certificate (cert=) and key (key=)")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=self.ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert, self.key)
        ctx.verify_mode = ssl.CERT_REQUIRED if self.require_client_cert else ssl.CERT_OPTIONAL
        return ctx

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = self.check_hostname
        ctx.verify_mode = ssl.CERT_REQUIRED
        if self.cert:
            ctx.load_cert_chain(self.cert, self.key)
        return ctx
