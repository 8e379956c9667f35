"""Code the tests share: random weights, a milesial-layout network, the multi-device child process."""
