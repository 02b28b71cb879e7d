"""Measuring the agent the way τ-bench does: scripted or simulated customers, judged by the final state."""
