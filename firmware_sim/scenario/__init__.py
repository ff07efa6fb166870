"""Scenarios: scripted drives with faults and expectations, their records and reports."""
