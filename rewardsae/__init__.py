"""Interpreting reward models in RLHF-tuned language models with sparse autoencoders (a reimplementation of arXiv 2310.08164)

Modules:

- `rewardsae.explain`: Three explainers behind one interface. `openai` asks GPT-4 (or any OpenAI-compatible server: vLLM, llama.cpp, Ollama) with the authors' prompt; `local` asks a Hugging Face chat model on this machine (default: SmolLM2-135M-Instruct, offline); `tokens` writes a description from token statistics, with no language model at all. Each can also *simulate* a feature from a description (chapter 12 scores that).
- `rewardsae.mmcs`: `mmcs` measures how well the rows of one dictionary are matched by the rows of another (paper eq. 2, and the authors' one-to-one variant). `top_features` keeps the best-matched features of a (large, small) pair with their index in *both* dictionaries; `compare_dictionaries` compares M_base's and M_RLHF's dictionaries per layer and lists the RLHF features that have no close base counterpart.
- `rewardsae.pipeline`: One run = one (base model, reward) pair taken through every stage of the paper: RL fine-tuning, layer divergence, activations, sparse autoencoders, MMCS, explanations, Tables 3 and 4. This notebook defines the run's parameters and its stages; `experiments/experiment.ipynb` (run by papermill through `rewardsae run`) calls them and renders the figures and tables.
- `rewardsae.sae`: `SparseAutoencoder` is the paper's dictionary learner (SPEC §1.4): one ReLU layer whose weight rows are renormalised to unit norm at every forward pass. `train_sae` fits one to a (tokens × d_model) matrix of activations, in memory or in a memmap on disk, and reports per-epoch reconstruction and sparsity. A toy problem with known ground-truth features checks that it really finds them.
- `rewardsae.scores`: Three measurements on the explained features: a *simulation score* per description (does it predict where the feature fires?), the paper's *Table 3* (how much VADER utility the descriptions' words carry, base vs RLHF), and an LLM-free measure of the same question (does the feature's activation follow the utility of the token it fires on?). Then the Appendix E tables."""

__version__ = "0.1.0"
