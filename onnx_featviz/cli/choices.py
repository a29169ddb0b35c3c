"""Option choices the command line shows before importing the library.

``featviz --help`` must start without onnx, onnxruntime or numpy, so the choices are spelled out
here; ``tests/test_cli_start.py`` checks that each equals the library's own tuple.
"""

PRESET_NAMES = ("imagenet", "caffe", "unit", "raw", "tf", "mnist")  # io.preprocess.PRESETS
BACKPROP_METHODS = ("saliency", "guided", "guided-gradcam")  # attribution.run
METRICS = ("cosine", "snr", "maxabs", "rel-l2")  # audit.compare
RECIPES = ("fourier", "pyramid")  # synthesis.run
OBJECTIVES = ("channel", "neuron", "layer")  # synthesis.maths
PROVIDERS = ("auto", "cuda", "cpu")  # runtime.PROVIDERS
ENGINES = ("local", "ray")  # audit.compare
DETECTION_FORMATS = ("yolov8", "yolov8-t", "yolov5", "boxes-scores", "nms", "end2end")
# attribution.detection.FORMATS
TARGET_KINDS = ("auto", "class", "segmentation", "detection", "element")  # attribution.seeds
