"""The data pipeline: asset sources, analysis and filters, Ray-driven rendering, latent encoding."""
