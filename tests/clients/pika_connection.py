"""How the pika clients reach tether: the port, and optionally TLS (pika's ssl_options), with
the server's CA and, for listeners that require one, a client certificate."""
import ssl

import pika


def add_arguments(parser):
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls-ca", default="", help="connect over TLS, trusting this CA file")
    parser.add_argument("--tls-cert", default="", help="client certificate (PEM)")
    parser.add_argument("--tls-key", default="", help="its private key (PEM)")


def parameters(args):
    ssl_options = None
    if args.tls_ca:
        context = ssl.create_default_context(cafile=args.tls_ca)
        if args.tls_cert:
            context.load_cert_chain(args.tls_cert, args.tls_key)
        ssl_options = pika.SSLOptions(context, "localhost")
    return pika.ConnectionParameters("127.0.0.1", args.port, connection_attempts=1,
                                     ssl_options=ssl_options)
