"""The SV4D 2.0 network, EDM training and novel-view video sampling."""
