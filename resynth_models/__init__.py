"""resynth_models: the ReSynthDetect networks, training, evaluation and prediction (PyTorch).

Paper: Niu et al., "ReSynthDetect: A Fundus Anomaly Detection Network with Reconstruction and
Synthetic Features". Stage 1 trains a reconstruction autoencoder (E_r, D_r); stage 2 trains a
U-shaped localisation network fed with the frozen E_r's features at every level.
"""

__version__ = "0.1.0"
