"""pnorm: Passport-aware Normalization (Zhang et al., NeurIPS 2020) for the pnorm book."""
