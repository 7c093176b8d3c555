"""spectrafm_hf: SpectraFM (Koblischke & Bovy 2024) as a Hugging Face Transformers-native package.

Importing the package registers ``model_type="spectrafm"`` with ``AutoConfig``, ``AutoModel`` and
``AutoFeatureExtractor``/``AutoProcessor``, so ``AutoModel.from_pretrained(path)`` returns a `SpectraFMModel`.
"""

__version__ = "0.1.0"  # first: submodules (the dataset builders' VERSION) read it while the package loads

from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

from .configuration_spectrafm import SpectraFMConfig
from .modeling_spectrafm import SpectraFMModel, SpectraFMOutput, SpectraFMPreTrainedModel
from .processing_spectrafm import SpectraFMProcessor
from .instruments import detect_format, read
from .spectrum import Spectrum, SpectrumError, air_to_vacuum, vacuum_to_air

AutoConfig.register("spectrafm", SpectraFMConfig, exist_ok=True)
AutoModel.register(SpectraFMConfig, SpectraFMModel, exist_ok=True)
AutoFeatureExtractor.register(SpectraFMConfig, SpectraFMProcessor, exist_ok=True)
# Saved folders carry their code, so they load with trust_remote_code=True where the package is not installed.
SpectraFMConfig.register_for_auto_class()
SpectraFMModel.register_for_auto_class("AutoModel")
SpectraFMProcessor.register_for_auto_class("AutoFeatureExtractor")  # with spectrum.py, its one relative import

from .pipeline import SpectraFMPipeline  # noqa: E402  (needs the registrations above)
from .stellar_labels_task import StellarLabelsPipeline  # noqa: E402

from transformers.pipelines import PIPELINE_REGISTRY  # noqa: E402

# transformers.pipeline("stellar-labels", model=...) -> StellarLabelsPipeline (model via AutoModel, processor via
# AutoFeatureExtractor)
PIPELINE_REGISTRY.register_pipeline("stellar-labels", pipeline_class=StellarLabelsPipeline, pt_model=AutoModel)

from .default_model import DEFAULT_MODEL_ALIAS, DEFAULT_MODEL_ID, ensure_default_model_in_cache  # noqa: E402

# AutoModel/AutoConfig/AutoFeatureExtractor.from_pretrained("spectrafm-base") work offline on a fresh install
ensure_default_model_in_cache()

__all__ = [
    "DEFAULT_MODEL_ALIAS",
    "DEFAULT_MODEL_ID",
    "SpectraFMConfig",
    "SpectraFMModel",
    "SpectraFMOutput",
    "SpectraFMPreTrainedModel",
    "StellarLabelsPipeline",
    "SpectraFMProcessor",
    "SpectraFMPipeline",
    "Spectrum",
    "SpectrumError",
    "read",
    "detect_format",
    "air_to_vacuum",
    "vacuum_to_air",
]
