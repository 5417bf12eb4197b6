"""moto's S3 app, for ``bench/stack.py`` to serve with gunicorn: one process (moto keeps its
objects in memory) with threads and HTTP keep-alive, as S3 services keep connections. moto's
own server (werkzeug's development server) closes every connection, which would charge a TCP
handshake and a new thread to every PUT."""

from moto.server import DomainDispatcherApplication, create_backend_app

app = DomainDispatcherApplication(create_backend_app)
