// Placeholder: the JavaScript client lands here.
export {};
