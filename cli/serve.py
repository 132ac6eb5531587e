"""`toolkit serve`: the web app over an index, its images and the feedback store (`image_toolkit.data_tools.web.app`).

FastAPI and uvicorn (the `serve` extra) are imported inside the command, so
`toolkit --help` works without them.
"""

from __future__ import annotations

import socket
from pathlib import Path

import click

from image_toolkit.cli.common import background_option, command, echo_json, json_option, quiet_option, runtime_options, start
from image_toolkit.data_tools.names import EXTRACT_PRECISIONS, check_runtime, default_precision
from image_toolkit.data_tools.names import SUGGEST_STRATEGIES as STRATEGIES


@command("serve", aliases={"--images": "--img-directory", "--labels": "--data-csv"})
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--img-directory", "images_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of the indexed images: the index's image paths are relative to it; nothing outside it is served.")
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), default=Path("feedback.sqlite"), show_default=True,
              help="SQLite feedback store (toolkit feedback); created with --data-csv when missing.")
@click.option("--data-csv", "labels", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Label CSV of the images, registered in --db (as toolkit feedback import --data-csv); needed once.")
@click.option("--map", "map_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Coordinates CSV (image,x,y) of toolkit tsne for the map view; default: a PCA of the index features.")
@click.option("--scores", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Class scores of the indexed images (toolkit get-inception-output), for keyword search.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; the default is this machine only. 0.0.0.0 opens it to the network.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="TCP port.")
@click.option("--token", envvar="IMAGE_TOOLKIT_TOKEN", show_envvar=True,
              help="Require this token on every /api request (open /?token=TOKEN once in the browser); "
                   "for a --host other than this machine.")
@click.option("--allow-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="Another Host name the page may be opened as (a DNS name or address of this machine); repeatable.")
@click.option("--thumbnail-cache", "thumbnail_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder the thumbnails are kept in across restarts; default: DB_STEM.thumbnails/ beside --db, "
                   "made on the first thumbnail.")
@click.option("--max-upload-mb", type=click.FloatRange(min=0, min_open=True), default=10, show_default=True,
              help="Largest query image accepted, in MiB.")
@click.option("--suggest", "suggest_source", metavar="MODEL|CSV", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A best_model.h5 (toolkit train): adds the view 'Review uncertain images' with the images it is least "
                   "sure of (as toolkit suggest), leaving out those --db has feedback on; the model scores every image at "
                   "start-up. Or a suggestions.csv of toolkit suggest, read in seconds: right for a large collection.")
@click.option("--suggest-n", type=click.IntRange(min=1), default=40, show_default=True, help="Images in that view.")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="margin", show_default=True,
              help="How --suggest MODEL ranks (toolkit suggest --strategy).")
@background_option("the index's features' own, else white; thumbnails")
@runtime_options(EXTRACT_PRECISIONS, recorded="the one that made the index's features; it embeds uploaded query images")
@quiet_option
@json_option
def serve(index_dir: Path, images_dir: Path, db: Path, labels: Path | None, map_csv: Path | None, scores: Path | None,
          host: str, port: int, token: str | None, allowed_hosts: tuple[str, ...], thumbnail_dir: Path | None,
          max_upload_mb: float, suggest_source: Path | None, suggest_n: int, strategy: str, background: str | None,
          runtime: str | None, precision: str | None, quiet: bool, as_json: bool) -> None:
    """Serve a search page over the index in INDEX_DIR: keyword or image queries, lasso, deselect, refine.

    The page shows the collection as a grid and as a map of every image
    (the --map t-SNE coordinates, else a PCA of the features up to 100,000
    images). Drag a lasso to select images, click one to deselect it, then
    Submit: the events go to the --db feedback store and the ranking is
    refined by Rocchio. Thumbnails are kept in --thumbnail-cache. The API is
    described at http://HOST:PORT/docs (/openapi.json).

    Only requests naming the host served on, localhost or an --allow-host
    are answered. A --host other than this machine is open to the network:
    give it a --token.

    \b
    Example:
      toolkit serve my_index/ --img-directory photos/ --data-csv label.txt --db feedback.sqlite
      toolkit serve my_index/ --img-directory photos/ --map tsne.csv --port 8080
      toolkit serve my_index/ --img-directory photos/ --suggest runs/demo/best_model.h5 --suggest-n 40
      toolkit serve my_index/ --img-directory photos/ --suggest suggestions.csv
      toolkit serve my_index/ --img-directory photos/ --runtime openvino
    """
    from image_toolkit.data_tools.web.app import missing_extra

    problem = missing_extra()
    if problem:
        raise click.ClickException(problem)
    start(quiet)
    import uvicorn

    from image_toolkit.data_tools.web.app import create_app, is_loopback
    from image_toolkit.models.upload_embedder import lazy_embedder

    if runtime or precision:  # Checked now, not on the first upload, which builds the embedder.
        from image_toolkit.data_tools.search.backends import load_index

        chosen = runtime or load_index(index_dir, mmap=True).features_metadata_.get("runtime", "tensorflow")  # header only
        check_runtime(chosen, default_precision(chosen, precision))
    suggest = None
    if suggest_source is not None and suggest_source.suffix.lower() == ".csv":
        from image_toolkit.data_tools.feedback.suggest import listed_suggester

        suggest = listed_suggester(suggest_source, n=suggest_n)
    elif suggest_source is not None:
        from image_toolkit.models.suggest import collection_suggester

        suggest = collection_suggester(suggest_source, images_dir, n=suggest_n, strategy=strategy)
    check_port(host, port)
    if not is_loopback(host):
        click.echo(f"Warning: {exposure(host, port, token)}", err=True)
    # The embedder reads the index's feature metadata from the app on the first upload.
    app = create_app(index_dir, images_dir, db, map_csv, labels=labels, scores=scores,
                     embed=lazy_embedder(lambda: app.state.collection.metadata, runtime=runtime, precision=precision),
                     max_upload_bytes=int(max_upload_mb * 1024 * 1024), host=host,
                     allowed_hosts=[*machine_names(host), *allowed_hosts], token=token,
                     thumbnail_dir=thumbnail_dir or db.with_name(f"{db.stem}.thumbnails"), background=background,
                     suggest=suggest)
    url = f"http://{host}:{port}/"
    if as_json:
        echo_json({"url": url, "images": len(app.state.collection.names), "db": str(db)})
    elif not quiet:
        click.echo(f"Serving {len(app.state.collection.names):,} images at {url} (feedback in {db}); Ctrl-C stops.", err=True)
    # With a token, the access log would print it (`GET /?token=...`): no access log then.
    uvicorn.run(app, host=host, port=port, log_level="warning" if quiet else "info", access_log=token is None)


def check_port(host: str, port: int) -> None:
    """Fail in one line if uvicorn could not listen on host:port; it would fail only after 'Serving ...' (exit 3).

    Binds and closes a socket as uvicorn binds its own (SO_REUSEADDR, IPv6
    for an address with a colon), so a port in use is found the same way.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as error:
            raise click.ClickException(f"{host}:{port}: cannot listen there ({error.strerror or error}); "
                                       "pass another --port, or stop the program using this one.") from None


def machine_names(host: str) -> list[str]:
    """Names a browser may use for this machine when serving on every address (0.0.0.0 or ::): its host names."""
    if host not in ("0.0.0.0", "::", ""):
        return []
    return list(dict.fromkeys([socket.gethostname(), socket.getfqdn()]))


def exposure(host: str, port: int, token: str | None) -> str:
    """The warning for a --host reachable from other machines: what is open, and what to do about it."""
    # Teammates who open the page by another name (an IP address, a DNS alias) get "Invalid host header" otherwise.
    names = "; add the names others use for this machine with --allow-host NAME"
    if token:
        return (f"--host {host} serves port {port} to the network over plain HTTP; every /api request needs the token "
                f"(open /?token=TOKEN once in the browser){names}.")
    return (f"--host {host} opens port {port} to the network with no authentication: anyone who reaches it can read "
            f"and add feedback; pass --token (or set IMAGE_TOOLKIT_TOKEN){names}.")
