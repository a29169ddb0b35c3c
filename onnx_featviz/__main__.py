"""``python -m onnx_featviz`` runs the ``featviz`` command line."""

from onnx_featviz.cli.commands import main

if __name__ == "__main__":
    main(prog_name="featviz")
