from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_TYPE_UNSPECIFIED: _ClassVar[DataType]
    DATA_TYPE_FLOAT32: _ClassVar[DataType]
    DATA_TYPE_FLOAT16: _ClassVar[DataType]
    DATA_TYPE_UINT8: _ClassVar[DataType]

class TargetKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TARGET_KIND_LOGIT: _ClassVar[TargetKind]
    TARGET_KIND_PROBABILITY: _ClassVar[TargetKind]
    TARGET_KIND_SIGMOID: _ClassVar[TargetKind]
    TARGET_KIND_REGION: _ClassVar[TargetKind]
    TARGET_KIND_PREDICTED_REGION: _ClassVar[TargetKind]
    TARGET_KIND_BOX: _ClassVar[TargetKind]
    TARGET_KIND_DOT: _ClassVar[TargetKind]
    TARGET_KIND_COSINE: _ClassVar[TargetKind]
    TARGET_KIND_DOT_IMAGE: _ClassVar[TargetKind]
    TARGET_KIND_COSINE_IMAGE: _ClassVar[TargetKind]

class OutputSize(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_SIZE_UNSPECIFIED: _ClassVar[OutputSize]
    OUTPUT_SIZE_INPUT: _ClassVar[OutputSize]
    OUTPUT_SIZE_FEATURE: _ClassVar[OutputSize]
    OUTPUT_SIZE_CUSTOM: _ClassVar[OutputSize]
DATA_TYPE_UNSPECIFIED: DataType
DATA_TYPE_FLOAT32: DataType
DATA_TYPE_FLOAT16: DataType
DATA_TYPE_UINT8: DataType
TARGET_KIND_LOGIT: TargetKind
TARGET_KIND_PROBABILITY: TargetKind
TARGET_KIND_SIGMOID: TargetKind
TARGET_KIND_REGION: TargetKind
TARGET_KIND_PREDICTED_REGION: TargetKind
TARGET_KIND_BOX: TargetKind
TARGET_KIND_DOT: TargetKind
TARGET_KIND_COSINE: TargetKind
TARGET_KIND_DOT_IMAGE: TargetKind
TARGET_KIND_COSINE_IMAGE: TargetKind
OUTPUT_SIZE_UNSPECIFIED: OutputSize
OUTPUT_SIZE_INPUT: OutputSize
OUTPUT_SIZE_FEATURE: OutputSize
OUTPUT_SIZE_CUSTOM: OutputSize

class Tensor(_message.Message):
    __slots__ = ("data", "shape", "dtype")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DataType
    def __init__(self, data: _Optional[bytes] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DataType, str]] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("encoded", "tensor", "targets", "target_specs")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    TARGET_SPECS_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    tensor: Tensor
    targets: _containers.RepeatedScalarFieldContainer[int]
    target_specs: _containers.RepeatedCompositeFieldContainer[Target]
    def __init__(self, encoded: _Optional[bytes] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ..., targets: _Optional[_Iterable[int]] = ..., target_specs: _Optional[_Iterable[_Union[Target, _Mapping]]] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("x1", "y1", "x2", "y2")
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    X2_FIELD_NUMBER: _ClassVar[int]
    Y2_FIELD_NUMBER: _ClassVar[int]
    x1: float
    y1: float
    x2: float
    y2: float
    def __init__(self, x1: _Optional[float] = ..., y1: _Optional[float] = ..., x2: _Optional[float] = ..., y2: _Optional[float] = ...) -> None: ...

class Mask(_message.Message):
    __slots__ = ("png", "raw", "rle")
    PNG_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    RLE_FIELD_NUMBER: _ClassVar[int]
    png: bytes
    raw: RawMask
    rle: RleMask
    def __init__(self, png: _Optional[bytes] = ..., raw: _Optional[_Union[RawMask, _Mapping]] = ..., rle: _Optional[_Union[RleMask, _Mapping]] = ...) -> None: ...

class RawMask(_message.Message):
    __slots__ = ("height", "width", "data")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    data: bytes
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class RleMask(_message.Message):
    __slots__ = ("height", "width", "counts")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., counts: _Optional[_Iterable[int]] = ...) -> None: ...

class Target(_message.Message):
    __slots__ = ("kind", "class_id", "box", "mask", "vector", "image")
    KIND_FIELD_NUMBER: _ClassVar[int]
    CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    kind: TargetKind
    class_id: int
    box: Box
    mask: Mask
    vector: _containers.RepeatedScalarFieldContainer[float]
    image: int
    def __init__(self, kind: _Optional[_Union[TargetKind, str]] = ..., class_id: _Optional[int] = ..., box: _Optional[_Union[Box, _Mapping]] = ..., mask: _Optional[_Union[Mask, _Mapping]] = ..., vector: _Optional[_Iterable[float]] = ..., image: _Optional[int] = ...) -> None: ...

class OutputOptions(_message.Message):
    __slots__ = ("size", "height", "width", "dtype", "normalize", "overlay_png", "top_k_predictions", "eps", "overlay_colormap", "overlay_image_weight")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_PNG_FIELD_NUMBER: _ClassVar[int]
    TOP_K_PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    EPS_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_COLORMAP_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_IMAGE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    size: OutputSize
    height: int
    width: int
    dtype: DataType
    normalize: bool
    overlay_png: bool
    top_k_predictions: int
    eps: float
    overlay_colormap: str
    overlay_image_weight: float
    def __init__(self, size: _Optional[_Union[OutputSize, str]] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., dtype: _Optional[_Union[DataType, str]] = ..., normalize: _Optional[bool] = ..., overlay_png: _Optional[bool] = ..., top_k_predictions: _Optional[int] = ..., eps: _Optional[float] = ..., overlay_colormap: _Optional[str] = ..., overlay_image_weight: _Optional[float] = ...) -> None: ...

class MethodOptions(_message.Message):
    __slots__ = ("smooth_n", "smooth_sigma", "score_top_n", "smooth_seed", "eigen_smooth", "aug_smooth")
    SMOOTH_N_FIELD_NUMBER: _ClassVar[int]
    SMOOTH_SIGMA_FIELD_NUMBER: _ClassVar[int]
    SCORE_TOP_N_FIELD_NUMBER: _ClassVar[int]
    SMOOTH_SEED_FIELD_NUMBER: _ClassVar[int]
    EIGEN_SMOOTH_FIELD_NUMBER: _ClassVar[int]
    AUG_SMOOTH_FIELD_NUMBER: _ClassVar[int]
    smooth_n: int
    smooth_sigma: float
    score_top_n: int
    smooth_seed: int
    eigen_smooth: bool
    aug_smooth: bool
    def __init__(self, smooth_n: _Optional[int] = ..., smooth_sigma: _Optional[float] = ..., score_top_n: _Optional[int] = ..., smooth_seed: _Optional[int] = ..., eigen_smooth: _Optional[bool] = ..., aug_smooth: _Optional[bool] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("id", "model", "images", "methods", "output", "method_options")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    METHOD_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    images: _containers.RepeatedCompositeFieldContainer[Image]
    methods: _containers.RepeatedScalarFieldContainer[str]
    output: OutputOptions
    method_options: MethodOptions
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., methods: _Optional[_Iterable[str]] = ..., output: _Optional[_Union[OutputOptions, _Mapping]] = ..., method_options: _Optional[_Union[MethodOptions, _Mapping]] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("class_id", "name", "probability")
    CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    class_id: int
    name: str
    probability: float
    def __init__(self, class_id: _Optional[int] = ..., name: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class Map(_message.Message):
    __slots__ = ("method", "target_index", "class_id", "data", "overlay_png", "rgb")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TARGET_INDEX_FIELD_NUMBER: _ClassVar[int]
    CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_PNG_FIELD_NUMBER: _ClassVar[int]
    RGB_FIELD_NUMBER: _ClassVar[int]
    method: str
    target_index: int
    class_id: int
    data: Tensor
    overlay_png: bytes
    rgb: Tensor
    def __init__(self, method: _Optional[str] = ..., target_index: _Optional[int] = ..., class_id: _Optional[int] = ..., data: _Optional[_Union[Tensor, _Mapping]] = ..., overlay_png: _Optional[bytes] = ..., rgb: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ImageExplanation(_message.Message):
    __slots__ = ("predictions", "target_ids", "logits", "maps", "target_kinds", "target_scores")
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    TARGET_IDS_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    MAPS_FIELD_NUMBER: _ClassVar[int]
    TARGET_KINDS_FIELD_NUMBER: _ClassVar[int]
    TARGET_SCORES_FIELD_NUMBER: _ClassVar[int]
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    target_ids: _containers.RepeatedScalarFieldContainer[int]
    logits: Tensor
    maps: _containers.RepeatedCompositeFieldContainer[Map]
    target_kinds: _containers.RepeatedScalarFieldContainer[TargetKind]
    target_scores: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., target_ids: _Optional[_Iterable[int]] = ..., logits: _Optional[_Union[Tensor, _Mapping]] = ..., maps: _Optional[_Iterable[_Union[Map, _Mapping]]] = ..., target_kinds: _Optional[_Iterable[_Union[TargetKind, str]]] = ..., target_scores: _Optional[_Iterable[float]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("id", "model", "images", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    images: _containers.RepeatedCompositeFieldContainer[ImageExplanation]
    error: Error
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., images: _Optional[_Iterable[_Union[ImageExplanation, _Mapping]]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "architecture", "target_layer", "input_size", "mean", "std", "num_classes", "class_names", "supported_methods", "activation_shape", "max_batch_size", "output_kind", "target_kinds", "output_shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    TARGET_LAYER_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    SUPPORTED_METHODS_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_SHAPE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_KIND_FIELD_NUMBER: _ClassVar[int]
    TARGET_KINDS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    architecture: str
    target_layer: str
    input_size: _containers.RepeatedScalarFieldContainer[int]
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    num_classes: int
    class_names: _containers.RepeatedScalarFieldContainer[str]
    supported_methods: _containers.RepeatedScalarFieldContainer[str]
    activation_shape: _containers.RepeatedScalarFieldContainer[int]
    max_batch_size: int
    output_kind: str
    target_kinds: _containers.RepeatedScalarFieldContainer[TargetKind]
    output_shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., architecture: _Optional[str] = ..., target_layer: _Optional[str] = ..., input_size: _Optional[_Iterable[int]] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ..., num_classes: _Optional[int] = ..., class_names: _Optional[_Iterable[str]] = ..., supported_methods: _Optional[_Iterable[str]] = ..., activation_shape: _Optional[_Iterable[int]] = ..., max_batch_size: _Optional[int] = ..., output_kind: _Optional[str] = ..., target_kinds: _Optional[_Iterable[_Union[TargetKind, str]]] = ..., output_shape: _Optional[_Iterable[int]] = ...) -> None: ...
