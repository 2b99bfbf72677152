"""The Hugging Face models of the earlier study and its blocked ones: one declaration each."""

from scircuits import HFModelAdapter

GPT2_SITES = {"resid": "", "mlp": "mlp", "attn": "attn"}
NEOX_SITES = {"resid": "", "mlp": "mlp", "attn": "attention"}

HF_ADAPTERS: tuple[HFModelAdapter, ...] = (
    HFModelAdapter(
        name="gpt2-medium",
        hf_id="openai-community/gpt2-medium",
        model_type="gpt2",
        description="GPT-2 medium (355M), OpenAI",
        n_layers=24,
        d_model=1024,
        default_layer=12,
        blocks_path="transformer.h",
        site_paths=GPT2_SITES,
    ),
    HFModelAdapter(
        name="pythia-1.4b",
        hf_id="EleutherAI/pythia-1.4b",
        model_type="gpt_neox",
        description="Pythia 1.4B, EleutherAI",
        n_layers=24,
        d_model=2048,
        default_layer=12,
        blocks_path="gpt_neox.layers",
        site_paths=NEOX_SITES,
    ),
    HFModelAdapter(
        name="gemma-2b",
        hf_id="google/gemma-2b",
        model_type="gemma",
        description="Gemma 2B, Google (gated: accept the licence, set HF_TOKEN)",
        n_layers=18,
        d_model=2048,
        default_layer=9,
    ),
    HFModelAdapter(
        name="phi-2",
        hf_id="microsoft/phi-2",
        model_type="phi",
        description="Phi-2 (2.7B), Microsoft",
        n_layers=32,
        d_model=2560,
        default_layer=16,
    ),
    HFModelAdapter(
        name="llama-3-8b",
        hf_id="meta-llama/Meta-Llama-3-8B",
        model_type="llama",
        description="Llama 3 8B, Meta (gated: accept the licence, set HF_TOKEN)",
        n_layers=32,
        d_model=4096,
        default_layer=16,
        remote=True,
    ),
    HFModelAdapter(
        name="mistral-7b",
        hf_id="mistralai/Mistral-7B-v0.1",
        model_type="mistral",
        description="Mistral 7B v0.1",
        n_layers=32,
        d_model=4096,
        default_layer=16,
        remote=True,
    ),
)
