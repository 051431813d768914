"""The pod's file contract, shared by every server: what the runtime lays out and sets, what a server
reads and reports back."""
