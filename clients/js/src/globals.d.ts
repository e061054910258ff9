// The few host globals the client uses, declared here so that the package compiles
// without the DOM or Node type libraries: browsers, React Native and Node all have them.
// Nothing in the published declarations refers to these.
declare function setTimeout(handler: () => void, ms?: number): unknown;
declare function clearTimeout(handle: unknown): void;
