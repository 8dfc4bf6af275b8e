"""Choose a Core ML precision for a PyTorch model: trace, convert, compile, evaluate, report."""
