"""Independent references the tests compare camserve against (plain PyTorch autograd)."""
