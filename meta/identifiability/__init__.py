"""Which masked-prediction tasks identify an HMM: restarts, parameter recovery, the paper's claims, the plot."""
