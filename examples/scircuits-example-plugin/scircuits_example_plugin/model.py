"""An architecture scircuits itself never names: Qwen2, declared over the shared Hugging Face adapter.

``scircuits run --model example-qwen2`` loads ``Qwen/Qwen2-0.5B`` from the hub (or its cache);
``--model-path DIR`` loads any folder holding a Qwen2 config, weights and tokenizer.
"""

from scircuits import HFModelAdapter, hookimpl

QWEN2 = HFModelAdapter(
    name="example-qwen2",
    hf_id="Qwen/Qwen2-0.5B",
    model_type="qwen2",
    description="Qwen2 0.5B, Alibaba (example plugin)",
    n_layers=24,
    d_model=896,
    default_layer=12,
    blocks_path="model.layers",
)


@hookimpl
def register_models(register):
    register(QWEN2)
